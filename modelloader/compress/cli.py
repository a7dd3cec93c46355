"""``modelloader compress IN OUT``: the click command (registered on the main group by cli.py)."""

from __future__ import annotations

import click

from modelloader.errors import CompressionAccuracyError, ModelLoaderError


def _layer_rate(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, float]:
    out = {}
    for v in values:
        name, sep, rate = v.rpartition("=")
        try:
            out[name] = float(rate)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=RATE, got {v!r}")
    return out


@click.command("compress")
@click.argument("src", metavar="IN")
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False))
@click.option(
    "--prune",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.9,
    show_default=True,
    help="fraction of each weight layer's smallest weights to zero",
)
@click.option(
    "--prune-layer",
    "prune_layers",
    multiple=True,
    callback=_layer_rate,
    help="NAME=RATE per-layer pruning rate (weight or node name); repeatable",
)
@click.option(
    "--palettize",
    "bits",
    type=click.IntRange(1, 8),
    default=5,
    show_default=True,
    help="palette bits of fully-connected weights (k-means codebook)",
)
@click.option(
    "--conv-bits",
    type=click.IntRange(1, 8),
    default=8,
    show_default=True,
    help="palette bits of convolution weights",
)
@click.option(
    "--huffman/--no-huffman",
    default=True,
    show_default=True,
    help="Huffman-code palette indices and sparse positions",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(exists=True, dir_okay=False),
    help=".npz with X (inputs) and y (labels) to measure accuracy on",
)
@click.option("--max-drop", type=float, help="fail (write nothing) if accuracy drops more points")
def compress_cmd(
    src: str,
    out: str,
    prune: float,
    prune_layers: dict[str, float],
    bits: int,
    conv_bits: int,
    huffman: bool,
    eval_data: str | None,
    max_drop: float | None,
) -> None:
    """Deep-Compresses IN (prune, palettize, Huffman) into the container OUT."""
    from modelloader.compress.pipeline import compress

    if max_drop is not None and eval_data is None:
        raise click.UsageError("--max-drop needs --eval DATA")
    try:
        result = compress(
            src,
            prune=prune,
            prune_layers=prune_layers,
            palettize_bits=bits,
            conv_bits=conv_bits,
            huffman=huffman,
            eval=eval_data,
            max_drop=max_drop,
            output=out,
        )
    except CompressionAccuracyError as e:
        res = e.result  # type: ignore[attr-defined]
        click.echo(str(res.report))
        click.echo(str(res.accuracy))
        raise click.ClickException(str(e)) from None
    except (ModelLoaderError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(result.report))
    if result.accuracy is not None:
        click.echo(str(result.accuracy))
    click.echo(f"wrote {out}")
