"""Convert an official T2T-ViT release checkpoint to flyweight's layout (safetensors + config).

    python scripts/convert_checkpoint_t2t_vit.py 81.7_T2T_ViTt_14.pth.tar \
        [-o out.safetensors] [--variant t2t_vit_t_14]

Every official tensor is mapped, shapes are checked, and the strict load into flyweight's model is
proven before the file is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flyweight.models.t2t_vit import T2T_VIT_VARIANTS
from flyweight.models.t2t_vit_checkpoint import convert_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="official .pth / .pth.tar file")
    ap.add_argument("-o", "--output", type=Path, help="output .safetensors (default: beside the input)")
    ap.add_argument("--variant", choices=sorted(T2T_VIT_VARIANTS), help="architecture (inferred when unique)")
    args = ap.parse_args(argv)
    name = args.checkpoint.name
    for ext in (".pth.tar", ".pth", ".pt", ".tar"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    out = args.output or args.checkpoint.with_name(name + ".safetensors")
    cfg = convert_checkpoint(args.checkpoint, out, args.variant)
    print(
        f"wrote {out} (+ {out.with_suffix('.json').name}): {cfg.tokens_type} T2T module, embed_dim "
        f"{cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}, {cfg.num_classes} classes, "
        f"{cfg.img_size} px"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
