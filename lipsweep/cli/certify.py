"""`lipsweep certify` (the certificate of trained models, checked by an attack) and
`lipsweep audit` (the Lipschitz audit of a layer class)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lipsweep.atomic import write_atomic, write_text_atomic
from lipsweep.backends.base import check_writable
from lipsweep.budget import Budget
from lipsweep.cli.common import DataOpt, DeviceOpt, at_least, console, err_console, pick_device
from lipsweep.config import CONFIG_FILE
from lipsweep.errors import InputError
from lipsweep.names import CHECKPOINT

if TYPE_CHECKING:
    from lipsweep.certify import Certificate
    from lipsweep.results.artifacts import FinalModel

FORMATS = (".json", ".parquet")


def certify(
    run_dir: Annotated[
        Path, typer.Argument(help="A sweep folder (its final models) or an attempt folder.")
    ],
    method: Annotated[str | None, typer.Option(help="Only this method's final model.")] = None,
    size: Annotated[str | None, typer.Option(help="Only this model size.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    budget: Annotated[str | None, typer.Option(help="This budget (default: the largest).")] = None,
    attack: Annotated[bool, typer.Option(help="PGD-attack every certified point.")] = True,
    attack_steps: Annotated[int, typer.Option(help="PGD steps per attack.")] = 50,
    attack_limit: Annotated[
        int | None, typer.Option(help="Attack at most N certified points per radius.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    max_examples: Annotated[
        int | None, typer.Option(help="Certify only the first N test examples.")
    ] = None,
    device: DeviceOpt = "auto",
    data_dir: DataOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the certificates here (.json or .parquet).")
    ] = None,
) -> None:
    """Certify trained models: guaranteed Lipschitz bound per layer and for the model, CRA at
    36/72/108/255 from float64 logits, and a PGD-L2 attack on every certified point.

    Any certified point the attack flips is a bug: the command then exits 1."""
    for option, value in (
        ("--attack-steps", attack_steps), ("--attack-limit", attack_limit),
        ("--batch-size", batch_size), ("--max-examples", max_examples),
    ):  # fmt: skip
        at_least(option, value, 1)
    if out is not None:
        if out.suffix not in FORMATS:
            raise InputError(f"--out must end in .json or .parquet, got {out.name!r}")
        check_writable(out.parent)
    label = Budget.parse(budget).label if budget is not None else None
    models = models_in(run_dir, dataset, size, method, label)
    chosen = pick_device(device)
    records = []
    for model in models:
        certificate = certify_one(model, chosen, data_dir, batch_size, max_examples, attack,
                                  attack_steps, attack_limit)  # fmt: skip
        console.print(certificate_table(model, certificate))
        records.append({**model_fields(model), **record_of(certificate)})
    if out is not None:
        write_records(records, out)
        console.print(f"certificates written to {out}")
    flipped = sum(check["flipped"] for record in records for check in record["radii"])
    if flipped:
        err_console.print(
            f"[bold red]error:[/] the attack flipped {flipped} certified point(s): a certificate "
            "is unsound (a bug in lipsweep: please report it with this model)",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(1)


def models_in(
    run_dir: Path, dataset: str | None, size: str | None, method: str | None, budget: str | None
) -> list[FinalModel]:
    """The models of an attempt folder (its checkpoint) or a sweep folder (its final runs)."""
    from lipsweep.results.artifacts import FinalModel, checkpoint_config, final_models

    if (run_dir / CHECKPOINT).is_file():
        config = checkpoint_config(run_dir / CHECKPOINT)
        return [FinalModel(run_dir.name, config["dataset"], config["size"], config["method"],
                           "", run_dir / CHECKPOINT)]  # fmt: skip
    if not (run_dir / CONFIG_FILE).is_file():
        raise InputError(
            f"{run_dir} is neither a sweep folder ({CONFIG_FILE}) nor an attempt folder "
            f"({CHECKPOINT}): give the folder `lipsweep launch` or `lipsweep train` wrote"
        )
    found = final_models(run_dir, dataset, size, method, budget)
    if not found:
        wanted = " ".join(v for v in (dataset, size, method, budget) if v is not None)
        raise InputError(
            f"{run_dir} has no completed final run{' of ' + wanted if wanted else ''}: "
            f"`lipsweep status {run_dir}` shows what has finished"
        )
    return found


def certify_one(
    model: FinalModel,
    device: str,
    data_dir: Path | None,
    batch_size: int,
    max_examples: int | None,
    attack: bool,
    attack_steps: int,
    attack_limit: int | None,
) -> Certificate:
    import torch

    from lipsweep.certify import certify_model
    from lipsweep.data import Batches, load_split
    from lipsweep.results.artifacts import load_checkpoint

    try:
        test = load_split(model.dataset, "test", data_dir)
    except FileNotFoundError as error:
        raise InputError(str(error)) from None
    if max_examples is not None:
        test = test.subset(range(min(max_examples, len(test))))
    batches = Batches(test, batch_size, False, torch.Generator(), device)
    network = load_checkpoint(model.checkpoint).to(device)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(),
    )  # fmt: skip
    title = f"{model.method}-{model.size} on {model.dataset}"
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{title}: bound", total=None)

        def report(phase: str, done: int, total: int) -> None:
            progress.update(task, description=f"{title}: {phase}", completed=done, total=total)

        return certify_model(network, batches, attack, attack_steps, attack_limit, report)


def model_fields(model: FinalModel) -> dict[str, Any]:
    return {
        "model": model.attempt_id, "dataset": model.dataset, "size": model.size,
        "method": model.method, "budget": model.budget,
    }  # fmt: skip


def record_of(certificate: Certificate) -> dict[str, Any]:
    from lipsweep.certify import certificate_record

    return certificate_record(certificate)


def certificate_table(model: FinalModel, certificate: Certificate) -> Table:
    """One model's certificate in 80 columns: one row per radius."""
    bound, metrics = certificate.lipschitz_bound, certificate.metrics
    title = (
        f"{model.method}-{model.size} on {model.dataset} {model.budget}".rstrip()
        + f": Lipschitz bound {bound:.6g} (L = {certificate.lipschitz:.6g}), "
        + f"accuracy {metrics['accuracy']:.2%}, {certificate.seconds['bound']:.1f} s to bound"
    )
    caption = (
        f"certified in float64; float32_logit_deviation {certificate.float32_logit_deviation:.3g}"
        " (max |z32 - z64|: a float32 user adds 2x it to the gap needed, 4x with float32 gaps)"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for name in ("radius", "CRA", "certified", "attacked", "flipped"):
        table.add_column(name, justify="right")
    for check in certificate.radii:
        flipped = f"[bold red]{check.flipped}[/]" if check.flipped else "0"
        key = f"cra_{round(check.eps * 255)}"
        table.add_row(f"{round(check.eps * 255)}/255", f"{metrics[key]:.2%}",
                      str(check.certified), str(check.attacked), flipped)  # fmt: skip
    return table


def write_records(records: list[dict[str, Any]], out: Path) -> None:
    """JSON: every record whole. Parquet: one row per model and radius."""
    if out.suffix == ".json":
        write_text_atomic(out, json.dumps(records, indent=2) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {**{k: record[k] for k in ("model", "dataset", "size", "method", "budget")},
         "lipschitz_bound": record["lipschitz_bound"],
         "certified_lipschitz": record["certified_lipschitz"],
         "float32_logit_deviation": record["float32_logit_deviation"],
         "accuracy": record["metrics"]["accuracy"], **check,
         "cra": record["metrics"][check["radius"]]}
        for record in records for check in record["radii"]
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows)
    write_atomic(out, lambda temporary: pq.write_table(table, temporary))


def audit(
    methods: Annotated[
        list[str] | None,
        typer.Argument(help="Methods (default: all) or import paths such as mypkg.layers:MyConv."),
    ] = None,
    kernel_size: Annotated[int, typer.Option(help="Kernel size of the audited layers.")] = 3,
    channels: Annotated[int, typer.Option(help="Channels of the audited layers.")] = 4,
) -> None:
    """Audit layers for 1-Lipschitzness: exact Jacobians (train and eval, before and after
    adversarial steps), the eval cache, the guaranteed bound. Exit 1 if a layer fails."""
    from lipsweep.audit import audit_layer, layer_class
    from lipsweep.layers.registry import METHODS

    at_least("--kernel-size", kernel_size, 1)
    at_least("--channels", channels, 2)
    names = methods or list(METHODS)
    classes = {name: layer_class(name) for name in names}  # import errors before any work
    table = Table(title=f"Lipschitz audit, {channels} channels, k = {kernel_size}, float64")
    for column in ("method", "check", "measured", "limit", "verdict"):
        table.add_column(column, justify="right")
    failures = []
    for name, cls in classes.items():
        for check in audit_layer(cls, channels, kernel_size):
            verdict = "ok" if check.passed else "[bold red]FAIL[/]"
            table.add_row(name, check.name, f"{check.value:.6g}", f"{check.limit:.6g}", verdict)
            if not check.passed:
                failures.append(f"{name}: {check.name} {check.value:.6g} > {check.limit:.6g}")
    console.print(table)
    if failures:
        err_console.print(
            f"[bold red]error:[/] not 1-Lipschitz: {'; '.join(failures)}",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(certify)
    app.command()(audit)
