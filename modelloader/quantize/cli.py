"""``modelloader quantize IN OUT``: the click command (registered on the main group by cli.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from modelloader.errors import ModelLoaderError


def _progress(it: Iterable[Any], length: int, label: str) -> Iterable[Any]:
    with click.progressbar(it, length=length, label=f"{label:<16}", file=sys.stderr) as bar:
        yield from bar


@click.command("quantize")
@click.argument("model", metavar="IN")
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["dynamic", "static", "float16"]),
    default="static",
    show_default=True,
)
@click.option("--calibration", "calibration", metavar="DATA", help=".npz or directory of .npy/.npz")
@click.option(
    "--method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="activation range estimate (static mode)",
)
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="weight scales")
@click.option("--symmetric", is_flag=True, help="int8 activations with zero point 0")
@click.option(
    "--exclude", multiple=True, metavar="PATTERN", help="layer name/output/op kept in float"
)
@click.option("--max-drop", type=float, default=None, help="fail if top-1 drops more (points)")
@click.option(
    "--auto-exclude",
    is_flag=True,
    help="keep the most sensitive layers in float until the gate passes",
)
@click.option("--eval", "evaluation", metavar="DATA", help="held-out data for the report")
@click.option(
    "--eval-split", type=float, default=0.2, show_default=True, help="calibration share held out"
)
@click.option("--float16-compute", is_flag=True, help="float16 mode: compute in float16 too")
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False), help="write the report as JSON"
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="draw per-layer SNR (matplotlib)"
)
def quantize(
    model: str,
    out: str,
    mode: str,
    calibration: str | None,
    method: str,
    per_channel: bool,
    symmetric: bool,
    exclude: tuple[str, ...],
    max_drop: float | None,
    auto_exclude: bool,
    evaluation: str | None,
    eval_split: float,
    float16_compute: bool,
    report_path: str | None,
    plot_path: str | None,
) -> None:
    """Quantize IN and write OUT (ONNX), with an accuracy report against the float model.

    DATA is an .npz (arrays by input name, first axis = samples; a single-input model also takes
    one unnamed array; y/labels arrays give accuracy) or a directory of .npy/.npz files.
    """
    from modelloader.quantize import AccuracyGateError, QuantConfig
    from modelloader.quantize import quantize as run

    try:
        config = QuantConfig(
            mode=mode,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
            per_channel=per_channel,
            symmetric=symmetric,
            exclude=exclude,
            max_drop=max_drop,
            auto_exclude=auto_exclude,
            eval_split=eval_split,
            float16_compute=float16_compute,
        )
        if plot_path:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise click.ClickException(
                    "--plot needs matplotlib: pip install 'modelloader[plot]'"
                ) from None
        for p in (calibration, evaluation):
            if p is not None and not Path(p).exists():
                raise click.ClickException(f"no such data file or directory: {p}")
        try:
            q = run(model, config, calibration, evaluation=evaluation, progress=_progress)
        except AccuracyGateError as e:
            click.echo(e.report.format(), err=True)
            if report_path:
                e.report.save(report_path)
            raise click.ClickException(f"{e} - nothing written") from None
        report = q.report
        assert report is not None
        click.echo(report.format())
        if report.auto_excluded:
            click.echo(f"auto-exclude kept in float: {', '.join(report.auto_excluded)}")
        if report.nonfinite_excluded:
            click.echo(
                "kept in float (inf/NaN values in calibration): "
                + ", ".join(report.nonfinite_excluded)
            )
        if report_path:
            report.save(report_path)
        if plot_path:
            report.plot(plot_path)
        q.save(out)
        click.echo(f"wrote {out}")
    except (ModelLoaderError, ValueError, RuntimeError, OSError) as e:
        raise click.ClickException(str(e)) from None
