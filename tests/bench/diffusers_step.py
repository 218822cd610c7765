#!/usr/bin/env python3
"""The peer figure of `kontext bench --peer PYTHON`: one transformer call of the same random-weight Flux through
diffusers' FluxTransformer2DModel, in float32 on this machine's CPU (torch's default thread count) unless the
configuration names another "device" (`cuda`) and "dtype" (`bfloat16`, `float16`).

Reads the step configuration as JSON on stdin (the fields of `kontext_web::bench::Sizes`' step: hidden, heads,
depth, single, context, vec_in_dim, in_channels, axes_dim, image_tokens, text_tokens, repeats, and optionally device and dtype) and prints {"seconds": mean seconds per call after one untimed
warm-up, "torch": ..., "diffusers": ..., "threads": ..., "device": ..., "dtype": ...}.
"""
import json
import sys
import time

import torch
import diffusers
from diffusers import FluxTransformer2DModel


def main():
    c = json.load(sys.stdin)
    torch.manual_seed(0)
    device, dtype = c.get("device", "cpu"), getattr(torch, c.get("dtype", "float32"))
    with torch.device(device):  # weights initialised where they run: seconds on a GPU at real scale
        model = FluxTransformer2DModel(
            patch_size=1,
            in_channels=c["in_channels"],
            num_layers=c["depth"],
            num_single_layers=c["single"],
            attention_head_dim=c["hidden"] // c["heads"],
            num_attention_heads=c["heads"],
            joint_attention_dim=c["context"],
            pooled_projection_dim=c["vec_in_dim"],
            guidance_embeds=True,
            axes_dims_rope=tuple(c["axes_dim"]),
        ).eval().to(device=device, dtype=dtype)
    n_img, n_txt = c["image_tokens"], c["text_tokens"]
    side = int(n_img ** 0.5 + 0.999999)
    img_ids = torch.tensor([[0.0, i // side, i % side] for i in range(n_img)])
    inputs = dict(
        hidden_states=torch.randn(1, n_img, c["in_channels"]),
        encoder_hidden_states=torch.randn(1, n_txt, c["context"]),
        pooled_projections=torch.randn(1, c["vec_in_dim"]),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([2.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(n_txt, 3),
        return_dict=False,
    )
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() and k not in ("img_ids", "txt_ids") else v.dtype)
              if torch.is_tensor(v) else v for k, v in inputs.items()}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(**inputs)
        sync()
        started = time.perf_counter()
        for _ in range(c["repeats"]):
            out = model(**inputs)[0]
            inputs["hidden_states"] = out
        sync()
        seconds = (time.perf_counter() - started) / c["repeats"]
    print(json.dumps({"seconds": seconds, "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "threads": torch.get_num_threads(), "device": device, "dtype": str(dtype)}))


if __name__ == "__main__":
    main()
