#!/usr/bin/env python3
"""The peer figure of `kontext bench --peer PYTHON`: one transformer call of the same random-weight Flux through
diffusers' FluxTransformer2DModel in float32 on this machine's CPU (torch's default thread count).

Reads the step configuration as JSON on stdin (the fields of `kontext_web::bench::Sizes`' step: hidden, heads,
depth, single, context, vec_in_dim, in_channels, axes_dim, image_tokens, text_tokens, repeats) and prints
{"seconds": mean seconds per call after one untimed warm-up, "torch": ..., "diffusers": ..., "threads": ...}.
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
    ).eval()
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
    with torch.no_grad():
        model(**inputs)
        started = time.perf_counter()
        for _ in range(c["repeats"]):
            out = model(**inputs)[0]
            inputs["hidden_states"] = out
        seconds = (time.perf_counter() - started) / c["repeats"]
    print(json.dumps({"seconds": seconds, "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
