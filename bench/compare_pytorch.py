"""Time the same parts with PyTorch/diffusers and with `vidgen bench`, side by side.

    python bench/compare_pytorch.py --vidgen target/release/vidgen \
        --parts dit,vae-decode --layers 8 --dtype f32 --threads 2

Parts: text (UMT5-XXL's encoder; --layers sets its depth too), dit, dit-cfg, vae-decode,
vae-encode.

Each part runs in a fresh process per implementation (so peak RSS is that part's own), with
random weights at Wan2.1-1.3B dimensions, on the same shapes and thread count. Prints one JSON
line per measurement and a table of vidgen/PyTorch ratios. Not run in CI.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
# google/umt5-xxl's encoder, Wan2.1's text encoder
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                use_cache=False)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)


def torch_part(args) -> dict:
    """Runs one part with PyTorch in this process and returns its measurement."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    with torch.no_grad():
        if args.part in ("dit", "dit-cfg"):
            batch = 1 if args.part == "dit" else 2
            cfg = dict(WAN_1_3B, num_layers=args.layers or WAN_1_3B["num_layers"])
            model = WanTransformer3DModel(**cfg).to(dtype).eval()
            x = torch.randn(batch, 16, t, h, w, dtype=dtype)
            text = torch.randn(batch, args.text_len, 4096, dtype=dtype)
            ts = torch.full((batch,), 500.0)
            run = lambda: model(x, ts, text, return_dict=False)
        elif args.part == "vae-decode":
            vae = AutoencoderKLWan(**WAN_VAE).to(dtype).eval()
            z = torch.randn(1, 16, t, h, w, dtype=dtype)
            run = lambda: vae.decode(z, return_dict=False)
        elif args.part == "vae-encode":
            vae = AutoencoderKLWan(**WAN_VAE).to(dtype).eval()
            video = torch.rand(1, 3, args.frames, args.height, args.width, dtype=dtype) * 2 - 1
            run = lambda: vae.encode(video, return_dict=False)
        elif args.part == "text":
            from transformers import UMT5Config, UMT5EncoderModel

            cfg = UMT5Config(**dict(UMT5_XXL, num_layers=args.layers or UMT5_XXL["num_layers"]))
            encoder = UMT5EncoderModel(cfg).to(dtype).eval()
            # the same ids as `vidgen bench`: (i * 7919 + 13) mod vocab, all attended
            ids = (torch.arange(args.text_len) * 7919 + 13) % cfg.vocab_size
            run = lambda: encoder(input_ids=ids.unsqueeze(0))
        else:
            raise SystemExit(f"unknown part {args.part}")
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return {
        "part": args.part, "impl": "pytorch", "seconds": statistics.median(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "dtype": args.dtype, "layers": args.layers, "threads": args.threads,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vidgen", default="target/release/vidgen")
    p.add_argument("--parts", default="dit,vae-decode")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.part:  # child process: one PyTorch part
        print(json.dumps(torch_part(args)))
        return

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    rows = []
    for part in args.parts.split(","):
        common = ["--layers", str(args.layers), "--dtype", args.dtype, "--frames", str(args.frames),
                  "--height", str(args.height), "--width", str(args.width),
                  "--text-len", str(args.text_len), "--repeats", str(args.repeats)]
        vidgen_extra = ["--threads", str(args.threads)]
        out = subprocess.run([sys.executable, __file__, "--part", part, "--threads",
                              str(args.threads), *common], env=env, check=True,
                             capture_output=True, text=True).stdout
        torch_row = json.loads(out.strip().splitlines()[-1])
        out = subprocess.run([args.vidgen, "bench", "--preset", "wan2.1-1.3b", "--parts", part, *vidgen_extra,
                              *common], env=env, check=True, capture_output=True, text=True).stdout
        vidgen_row = json.loads(out.strip().splitlines()[-1])
        vidgen_row["impl"] = "vidgen"
        for row in (torch_row, vidgen_row):
            print(json.dumps(row))
        rows.append((part, torch_row, vidgen_row))

    print(f"\n| part | dtype | PyTorch s | vidgen s | time ratio | PyTorch GB | vidgen GB | memory ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for part, t, v in rows:
        print(f"| {part} | {args.dtype} | {t['seconds']:.2f} | {v['seconds']:.2f} | "
              f"{v['seconds'] / t['seconds']:.2f} | {t['peak_rss_bytes'] / 1e9:.2f} | "
              f"{v['peak_rss_bytes'] / 1e9:.2f} | {v['peak_rss_bytes'] / t['peak_rss_bytes']:.2f} |")


if __name__ == "__main__":
    main()
