"""Draws docs/images/attention_maps.png: ordinary self-attention next to ASAG's adversarial
Sinkhorn attention, for a small synthetic "image" of 12 x 12 tokens.

    .venv/bin/python docs/make_figures.py

Top row: where three chosen queries look (one heat map per query, over the 12 x 12 token grid).
Bottom row: the whole 144 x 144 plan, with its column sums underneath (ordinary attention piles
mass on a few keys; the Sinkhorn plan uses every key about equally)."""
import os
import sys

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from asag.sinkhorn import adversarial_sinkhorn_attention  # noqa: E402

SIDE, DIM, CELL = 12, 16, 8
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images", "attention_maps.png")


def tokens():
    """Smooth features over a 12 x 12 grid: neighbouring tokens are similar, as in a latent."""
    gen = torch.Generator().manual_seed(0)
    field = torch.randn(1, DIM, SIDE // 3, SIDE // 3, generator=gen)
    field = torch.nn.functional.interpolate(field, size=(SIDE, SIDE), mode="bilinear", align_corners=True)
    return field.flatten(2).transpose(1, 2)[0] * 2.0  # (144, DIM)


def colour(value):
    """0..1 to a dark-blue / yellow ramp."""
    value = max(0.0, min(1.0, value))
    return (int(255 * value ** 0.8), int(220 * value), int(90 + 100 * (1 - value)))


def heatmap(values, width, height):
    values = values / values.max().clamp_min(1e-12)
    image = Image.new("RGB", (values.shape[1], values.shape[0]))
    image.putdata([colour(float(v)) for v in values.flatten()])
    return image.resize((width, height), Image.NEAREST)


def plans(x):
    n = x.shape[0]
    eye = torch.eye(n)
    ordinary = adversarial_sinkhorn_attention(x, x, eye, iterations=0, strength=-1.0)  # softmax(q k^T / sqrt d)
    adversarial = adversarial_sinkhorn_attention(x, x, eye, iterations=3, strength=1.0)
    return {"ordinary self-attention": ordinary, "ASAG: adversarial Sinkhorn (3 iterations)": adversarial}


def main():
    x = tokens()
    queries = [SIDE * 2 + 2, SIDE * 6 + 6, SIDE * 9 + 10]
    panel = SIDE * CELL
    width = 40 + len(queries) * (panel + 16) + 16 + 2 * panel
    height = 2 * (panel * 2 + 80) + 20
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (title, plan) in enumerate(plans(x).items()):
        top = 10 + row * (panel * 2 + 80)
        draw.text((10, top), title, fill="black")
        for i, query in enumerate(queries):
            left = 10 + i * (panel + 16)
            canvas.paste(heatmap(plan[query].reshape(SIDE, SIDE), panel, panel), (left, top + 20))
            qx, qy = (query % SIDE) * CELL + left, (query // SIDE) * CELL + top + 20
            draw.rectangle([qx, qy, qx + CELL - 1, qy + CELL - 1], outline="red")
            draw.text((left, top + 24 + panel), f"query {query} (red)", fill="black")
        left = 10 + len(queries) * (panel + 16) + 16
        canvas.paste(heatmap(plan, 2 * panel, 2 * panel), (left, top + 20))
        columns = plan.sum(0)
        draw.text((left, top + 24 + 2 * panel), f"whole plan; column sums {float(columns.min()):.2f}..{float(columns.max()):.2f}", fill="black")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    canvas.save(OUT, optimize=True)
    print(OUT)


if __name__ == "__main__":
    main()
