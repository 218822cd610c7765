#!/usr/bin/env python3
"""Cuts one fuzz corpus down to its named inputs (the seeds of make_seeds.py and every past finding,
`*-regression-*`) plus a greedy set cover of the coverage edges *in this crate's own code* (src/) that the other
inputs reach. Coverage inside dependencies (image decoders, serde_json, tokenizers) is left to their own fuzzing:
counting it keeps thousands of inputs that differ only there.

Usage: minimize.py FUZZ_BINARY CORPUS_DIR SOURCE_ROOT  (run by `make fuzz-minimize`; needs binutils).
Each input runs alone through libFuzzer's merge (`-merge_control_file`) to get its full edge set; edges are
libFuzzer's PC-table entries, mapped to source files with addr2line on the binary's line tables.
"""
import os
import shutil
import subprocess
import sys
import tempfile


def pc_table(binary):
    """The address of every PC-table entry, in libFuzzer's index order."""
    sections = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True, check=True).stdout
    line = next(l for l in sections.splitlines() if "__sancov_pcs" in l)
    fields = line.split("]", 1)[1].split()
    start, size = int(fields[2], 16), int(fields[4], 16)
    relocs = subprocess.run(["readelf", "-r", "-W", binary], capture_output=True, text=True, check=True).stdout
    pcs = {}
    for l in relocs.splitlines():
        parts = l.split()
        if len(parts) == 4 and parts[2] == "R_X86_64_RELATIVE":
            offset = int(parts[0], 16)
            if start <= offset < start + size and (offset - start) % 16 == 0:
                pcs[(offset - start) // 16] = int(parts[3], 16)
    return [pcs.get(i, 0) for i in range(size // 16)]


def own_edges(binary, source_root):
    """Indices of the PC-table entries whose code (innermost inlined frame) is under `source_root`."""
    table = pc_table(binary)
    addresses = "\n".join(hex(pc) for pc in table) + "\n"
    # -a marks each address; -i lists the frames inlined there, so code of ours that inlines std counts too.
    out = subprocess.run(["addr2line", "-a", "-i", "-e", binary], input=addresses, capture_output=True, text=True,
                         check=True)
    root = os.path.abspath(source_root) + os.sep
    ours, index = set(), -1
    for line in out.stdout.splitlines():
        if line.startswith("0x"):
            index += 1
        elif line.startswith(root):
            ours.add(index)
    return ours


def edges_of(binary, path):
    """The PC-table entries one input covers."""
    inputs, empty = tempfile.mkdtemp(), tempfile.mkdtemp()
    control = inputs + ".ctl"
    try:
        os.link(path, os.path.join(inputs, os.path.basename(path)))
        subprocess.run([binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", "-rss_limit_mb=4096",
                        "-timeout=20", empty, inputs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        covered = set()
        with open(control) as lines:
            for line in lines:
                if line.startswith("COV "):
                    covered.update(int(x) for x in line.split()[2:])
        return covered
    finally:
        shutil.rmtree(inputs)
        shutil.rmtree(empty)
        if os.path.exists(control):
            os.remove(control)


def is_hash_name(name):
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)


def main():
    binary, corpus, source_root = sys.argv[1:4]
    ours = own_edges(binary, source_root)
    names = sorted(os.listdir(corpus))
    edges = {name: edges_of(binary, os.path.join(corpus, name)) & ours for name in names}
    kept = [n for n in names if not is_hash_name(n)]
    covered = set().union(*(edges[n] for n in kept))
    candidates = {n: edges[n] - covered for n in names if is_hash_name(n)}
    while candidates:
        best = max(candidates, key=lambda n: (len(candidates[n] - covered), n))
        gain = candidates.pop(best) - covered
        if not gain:
            break
        covered |= gain
        kept.append(best)
    reached = set().union(*edges.values())
    for name in names:
        if name not in kept:
            os.remove(os.path.join(corpus, name))
    print(f"{os.path.basename(corpus)}: {len(names)} inputs -> {len(kept)} ({len(names) - len([n for n in names if is_hash_name(n)])} named), "
          f"{len(covered)} of {len(reached)} edges in src/ kept covered")
    assert covered == reached


if __name__ == "__main__":
    main()
