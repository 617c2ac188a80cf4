"""The command line's flags, declared as data: one table of flags per command (`commands()`), their defaults
read from where the options live (ConvertSpec for `studio convert`, AppConfig for `studio app`), the parser
built from the tables, and the one mapping from `studio convert`'s flags to the ConvertSpec (the job limits'
defaults are computed in studio.jobs.limits)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from studio.errors import StudioError
from studio.jobs.isolate import Limits  # noqa: F401 - part of the flags' interface
from studio.jobs.limits import (  # noqa: F401 - the job limits' defaults (computed there: the batch driver's too)
    BATCH_MEMORY_CAP_MB,
    MEMORY_SHARE,
    TIMEOUT_DEFAULT_S,
    default_memory_mb,
    job_limits,
    limit_error,
    machine_memory_mb,
)
from studio.spec import (
    EXPORTERS,
    HEAD_NAMES,
    ID_DTYPES,
    SAMPLE_LIMITS_OPTION,
    TASKS,
    VARIANTS,
    ConvertSpec,
    SampleLimits,
    default,
    parse_roles,
    parse_sample_limits,
    parse_tabular,
)

SAMPLE_LIMITS_HELP = (
    "what the sample file may hold, e.g. rows=50000,size=200mb (defaults: "
    + ", ".join(f"{k}={v}" for k, v in vars(SampleLimits()).items())
    + ")"
)


def _csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _count(value: str) -> int:
    """A whole number written as 5000000000, 5_000_000_000 or 5e9."""
    try:
        return int(float(value.replace("_", "")))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number (e.g. 5e9)") from None


def _limit_flags(batch: bool) -> tuple[Flag, ...]:
    """--memory-limit and --timeout with their defaults (job_limits) in the help."""
    per = "a job" if batch else "the conversion (run in a child process)"
    share = f"{MEMORY_SHARE:.0%}".replace("%", "%%")  # argparse formats help with %
    memory = (
        f"the smaller of the app's {BATCH_MEMORY_CAP_MB:,} MB and {share} of this machine's memory"
        if batch
        else f"{share} of this machine's memory"
    )
    return (
        flag(
            "--memory-limit",
            f"stop {per} above this much memory (default: {memory}, {default_memory_mb(batch):,} MB here; 0: no limit)",
            type=float,
            default=None,
            metavar="MB",
        ),
        flag(
            "--timeout",
            f"stop {per} after this long (default {TIMEOUT_DEFAULT_S:g} s; 0: no limit)",
            type=float,
            default=None,
            metavar="SECONDS",
        ),
    )


@dataclass(frozen=True)
class Flag:
    """One flag or positional argument: its name, its help ("{default}" in it is the flag's default, with a
    format spec where one is written, e.g. {default:g}), argparse's other settings, and the mutually
    exclusive group it belongs to (flags naming the same group exclude each other)."""

    name: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)
    exclusive: str | None = None


def flag(name: str, help: str, exclusive: str | None = None, **settings: Any) -> Flag:
    return Flag(name, help, settings, exclusive)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help, its description and its flags, in the order shown."""

    name: str
    help: str
    description: str
    flags: tuple[Flag, ...]


def _operator_flags(plugin_note: str, trust_note: str) -> tuple[Flag, ...]:
    """--trust-code and --plugin: code only the operator may let in (convert and app)."""
    return (
        flag("--trust-code", f"operator only: {trust_note}", action="store_true"),
        flag(
            "--plugin",
            f"operator only: load checkpoint kinds from this plugin module or .py file {plugin_note}",
            action="append",
            default=[],
            metavar="MODULE_OR_FILE",
        ),
    )


MAX_PARAMS = flag(
    "--max-params",
    "refuse a checkpoint whose config declares more parameters (default {default:,})",
    type=_count,
    default=default("max_params"),
    metavar="N",
)
SAMPLE_LIMITS = flag(SAMPLE_LIMITS_OPTION, SAMPLE_LIMITS_HELP, default=None, metavar="KEY=N,...")
DEBUG = flag("--debug", "show tracebacks", action="store_true")
JSON = flag("--json", "print JSON", action="store_true")

# `studio convert`: every ConvertSpec option is a flag, its default read from studio.spec.default
CONVERT_FLAGS = (
    flag(
        "checkpoint",
        "file (.pt .pth .ckpt .bin .zip ...) or model folder",
        metavar="CHECKPOINT",
        nargs="?",
        default=None,
    ),
    flag("--data", "sample rows: .csv .tsv .json .jsonl", metavar="SAMPLE", default=None),
    flag(
        "--demo",
        "convert the built-in demo (shipped in the package): its checkpoint and, without --data, its sample.csv",
        action="store_true",
    ),
    flag(
        "--role",
        "text | tabular | ignore for a column (repeatable); others get the suggested role",
        action="append",
        default=[],
        metavar="COL=ROLE",
    ),
    flag(
        "--tabular",
        "the columns feeding a tabular input, in order (ranges by name: FIRST..LAST; "
        "repeatable); default: the columns mapped tabular, in file order",
        action="append",
        default=[],
        metavar="INPUT=COL1,COL2,...",
    ),
    flag("--opset", "ONNX opset (default {default})", type=int, default=default("opset")),
    flag(
        "--dynamic",
        "dynamic axes on every input: batch,sequence (default both)",
        "dynamic",
        type=_csv_list,
        default=default("dynamic"),
        metavar="AXES",
    ),
    flag("--static", "no dynamic axes: every shape fixed to the sample's", "dynamic", action="store_true"),
    flag(
        "--exporter",
        "auto = legacy TorchScript exporter first for models up to 256 MB of weights, the new torch.export-based "
        "one first for larger ones, the other when the first fails or its file fails a check (default); "
        "compare = run both, check and time both files, keep the better one",
        choices=EXPORTERS,
        default=default("exporter"),
    ),
    flag("--max-length", "tokenizer max length (default {default})", type=int, default=default("max_length")),
    flag("--id-dtype", "dtype of token ids (default {default})", choices=ID_DTYPES, default=default("id_dtype")),
    flag(
        "--fill-value",
        "fill empty tabular cells with this number instead of failing",
        type=float,
        default=default("fill_value"),
    ),
    flag("--atol", "parity absolute tolerance (default {default:g})", type=float, default=default("atol")),
    flag("--rtol", "parity relative tolerance (default {default:g})", type=float, default=default("rtol")),
    flag("--threads", "intra-op threads for PyTorch and ORT (default: cores)", type=int, default=default("threads")),
    flag(
        "--latency-budget",
        "seconds per runtime and batch size for latency, warm-ups included (default {default})",
        type=float,
        default=default("latency_budget_s"),
        metavar="SECONDS",
    ),
    flag("--no-cuda", "skip CUDA measurements even when a GPU is present", action="store_true"),
    flag(
        "--variants",
        f"extra artifacts to build and check: {','.join(VARIANTS)}",
        type=_csv_list,
        default=default("variants"),
        metavar="LIST",
    ),
    flag(
        "--repair",
        "repair a variant that fails its verdict: keep its worst nodes in float, rebuild and recheck "
        "(default on; --no-repair reports the failure as is)",
        action=argparse.BooleanOptionalAction,
        default=default("repair"),
    ),
    flag(
        "--config",
        "config.json (or model folder) for a bare state dict / .safetensors checkpoint",
        default=default("config"),
        metavar="PATH",
    ),
    flag("--head", "built-in head for a state-dict backbone", choices=HEAD_NAMES, default=default("head")),
    flag(
        "--task",
        "what a model folder is exported as (default auto: modules.json -> sentence-embedding, "
        "else config.json's architectures: an LM head -> text-generation / text2text-generation)",
        choices=TASKS,
        default=default("task"),
    ),
    flag(
        "--no-cache",
        "a generator (text-generation) without its key/value cache: the plain forward, logits only "
        "(default: the cache is an input and an output, as deployed)",
        action="store_true",
    ),
    flag(
        "--max-new-tokens",
        "a generator's check: new tokens generated greedily for each prompt (default {default})",
        type=int,
        default=default("max_new_tokens"),
        metavar="N",
    ),
    flag(
        "--locate",
        "find where ONNX Runtime first leaves PyTorch even when every check passes (runs by "
        "itself when parity or a shape probe fails)",
        action="store_true",
    ),
    *_operator_flags(
        "(repeatable; also ONNX_STUDIO_PLUGINS and the 'onnx_studio.sources' entry points)",
        "allow TorchScript, .pt2 and pickled modules (they can run code)",
    ),
    MAX_PARAMS,
    *_limit_flags(batch=False),
    SAMPLE_LIMITS,
    flag("--out", "output folder (default ./{default})", default=default("out"), metavar="DIR"),
    flag("--json", "print report.json to stdout instead of the summary", action="store_true"),
    flag("--quiet", "no progress lines on stderr", action="store_true"),
    DEBUG,
)

# `studio batch MANIFEST` (studio/jobs/fleet.py; on Ray: studio/jobs/ray_fleet.py); trust and limits are the operator's,
# for every entry (a manifest line may not set them: studio.jobs.manifest.OPERATOR)
BATCH_FLAGS = (
    flag("manifest", ".jsonl, .csv or .yaml: one conversion per line", metavar="MANIFEST"),
    flag("--out", "output folder (default ./{default})", default="studio-batch", metavar="DIR"),
    flag(
        "--inputs-under",
        "every checkpoint, sample and config a manifest line names must lie in this folder, links followed "
        "(default: the manifest's folder)",
        default=None,
        metavar="DIR",
    ),
    flag(
        "--jobs",
        "conversions at once (default: what this machine holds: CPUs, memory / --memory-limit); "
        "with --ray the cluster's resources decide",
        type=int,
        default=None,
        metavar="N",
    ),
    flag(
        "--ray",
        "run each conversion as a Ray task: a cluster ADDRESS (HEAD:6379), auto, or local",
        default=None,
        metavar="ADDRESS",
    ),
    flag(
        "--shared-dir",
        "with --ray: a folder every node mounts at the same path, holding the inputs and --out; "
        "default: inputs and outputs travel through Ray",
        default=None,
        metavar="DIR",
    ),
    *_limit_flags(batch=True),
    *_operator_flags(
        "(repeatable; not with --ray)", "allow TorchScript, .pt2 and pickled modules in every entry (they can run code)"
    ),
    MAX_PARAMS,
    SAMPLE_LIMITS,
    flag("--force", "run every entry, also those unchanged since their last run", action="store_true"),
    flag("--quiet", "no progress on stderr", action="store_true"),
    DEBUG,
)


def app_flags() -> tuple[Flag, ...]:
    """`studio app`: the operator's settings, their defaults read from studio.app.config.AppConfig (imported
    here, when the parser is built, not with this module: importing the CLI imports nothing of the app)."""
    from studio.app.config import HOST, PORT, AppConfig

    return (
        flag("--host", "address to listen on (default {default})", default=HOST),
        flag("--port", "port (default {default})", type=int, default=PORT),
        *_operator_flags("(repeatable)", "allow uploads that can run code when loaded (shown in the page)"),
        flag(
            "--max-jobs",
            "conversions running at once; the rest queue (default {default})",
            type=int,
            default=AppConfig.max_jobs,
        ),
        flag(
            "--job-timeout",
            "a job running longer is stopped (default {default:g})",
            type=float,
            default=AppConfig.job_timeout_s,
            metavar="SECONDS",
        ),
        flag(
            "--memory-limit",
            "a job using more memory is stopped (default {default})",
            type=int,
            default=AppConfig.memory_limit_mb,
            metavar="MB",
        ),
        flag("--max-file-size", "largest upload accepted (default {default})", default=AppConfig.max_file_size),
        MAX_PARAMS,
        flag(
            "--session-ttl",
            "an idle session's files are removed after this long (default {default:g})",
            type=float,
            default=AppConfig.session_ttl_s,
            metavar="SECONDS",
        ),
        flag(
            "--session-grace",
            "... and after this long when it has no heartbeat open: an API caller, a closed page (default {default:g})",
            type=float,
            default=AppConfig.session_grace_s,
            metavar="SECONDS",
        ),
        flag(
            "--max-sessions",
            "sessions open at once, 0 for no limit (default {default})",
            type=int,
            default=AppConfig.max_sessions,
            metavar="N",
        ),
        flag(
            "--max-client-sessions",
            "sessions open at once from one client address, 0 for no limit (default {default})",
            type=int,
            default=AppConfig.max_client_sessions,
            metavar="N",
        ),
        flag(
            "--max-client-disk",
            "MB of files one client address's sessions may hold, 0 for no limit (default {default})",
            type=int,
            default=AppConfig.max_client_disk_mb,
            metavar="MB",
        ),
        flag(
            "--max-disk",
            "MB of files all sessions may hold, 0 for no limit (default {default})",
            type=int,
            default=AppConfig.max_disk_mb,
            metavar="MB",
        ),
        SAMPLE_LIMITS,
        flag(
            "--ray",
            "run each conversion as a Ray task: a cluster ADDRESS (HEAD:6379), auto, or local; "
            "previews stay on this machine",
            default=None,
            metavar="ADDRESS",
        ),
        # unset: the app's defaults (cmd_app leaves them out)
        flag(
            "--graph-max-nodes",
            "the Graph panel draws graphs of at most N nodes, else offers the download "
            f"(default {AppConfig.graph_max_nodes})",
            type=int,
            default=None,
            metavar="N",
        ),
        flag(
            "--graph-max-mb",
            "... and .onnx files of at most MB megabytes, external weights not counted "
            f"(default {AppConfig.graph_max_mb:g})",
            type=float,
            default=None,
            metavar="MB",
        ),
        DEBUG,
    )


def commands() -> tuple[Command, ...]:
    """Every subcommand, in the order `studio --help` lists them."""
    return (
        Command(
            "convert",
            "export a checkpoint to ONNX and verify it on sample rows",
            "Export CHECKPOINT to ONNX using the rows in --data, then check it: onnx "
            "checker, PyTorch-vs-ONNX Runtime parity, dynamic-dimension probes, latency.",
            CONVERT_FLAGS,
        ),
        Command(
            "inspect",
            "print an .onnx file's inputs, outputs, opset and checker status",
            "Print graph inputs/outputs (symbolic dims), opset, op counts and the checker.",
            (flag("model", "", metavar="MODEL.onnx"), JSON, DEBUG),
        ),
        Command(
            "roles",
            "show a sample file's columns and their suggested roles",
            "Read SAMPLE and print each column's detected type, example and suggested role.",
            (flag("data", "", metavar="SAMPLE"), SAMPLE_LIMITS, JSON, DEBUG),
        ),
        Command("app", "start the web studio", "Start the Gradio web studio.", app_flags()),
        Command(
            "batch",
            "run every conversion of a manifest (JSONL / CSV / YAML), locally or on Ray",
            "Convert and check every entry of MANIFEST (one conversion per line: checkpoint, "
            "data, roles, options named as in ConvertSpec), each in its own process under "
            "the job limits, into OUT/NAME; writes OUT/summary.json and OUT/summary.md. "
            "Entries unchanged since a complete run are skipped. Exit 0 all passed, 1 a "
            "check failed, 2 an entry could not be converted.",
            BATCH_FLAGS,
        ),
    )


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    """Declare `flags` on `parser`, in order; flags naming the same exclusive group exclude each other."""
    groups: dict[str, Any] = {}
    for f in flags:
        target = parser
        if f.exclusive is not None:
            if f.exclusive not in groups:
                groups[f.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[f.exclusive]
        help_text = f.help.format(default=f.settings.get("default")) if f.help else None
        target.add_argument(f.name, help=help_text, **f.settings)


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser from commands(); the command chosen is `args.command`."""
    p = argparse.ArgumentParser(prog="studio", description="ONNX Studio: PyTorch checkpoint -> verified ONNX.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in commands():
        add_flags(sub.add_parser(c.name, help=c.help, description=c.description), c.flags)
    return p


def _demo_paths(args: argparse.Namespace) -> tuple[str, str]:
    """CHECKPOINT and --data, or the packaged demo's with --demo."""
    if getattr(args, "demo", False):
        if args.checkpoint:
            raise StudioError(f"--demo converts the built-in demo; leave out CHECKPOINT ({args.checkpoint}).")
        from studio import demo

        return str(demo.checkpoint()), str(args.data or demo.sample())
    if not args.checkpoint:
        raise StudioError(
            "No CHECKPOINT given.",
            hint="studio convert CHECKPOINT --data SAMPLE, or studio convert --demo for the built-in demo.",
        )
    if not args.data:
        raise StudioError("No sample file given (--data SAMPLE: a few real rows as CSV / TSV / JSON / JSONL).")
    return args.checkpoint, args.data


def spec_from_args(args: argparse.Namespace) -> ConvertSpec:
    """The one mapping from CLI flags to the ConvertSpec."""
    checkpoint, data = _demo_paths(args)
    return ConvertSpec(
        checkpoint=checkpoint,
        data=data,
        out=args.out,
        roles=parse_roles(args.role),
        tabular=parse_tabular(args.tabular),
        opset=args.opset,
        exporter=args.exporter,
        dynamic=() if args.static else tuple(args.dynamic),
        max_length=args.max_length,
        id_dtype=args.id_dtype,
        atol=args.atol,
        rtol=args.rtol,
        fill_value=args.fill_value,
        latency_budget_s=args.latency_budget,
        threads=args.threads,
        cuda=not args.no_cuda,
        variants=tuple(args.variants),
        repair=args.repair,
        config=args.config,
        head=args.head,
        task=args.task,
        cache=not args.no_cache,
        max_new_tokens=args.max_new_tokens,
        trust_code=args.trust_code,
        max_params=args.max_params,
        locate=args.locate,
        debug=args.debug,
        sample_limits=parse_sample_limits(args.sample_limits),
    ).validated()
