"""The `llmpipe` command: run a pipeline, validate or show its config, list the stages."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextvars import copy_context
from pathlib import Path
from typing import Any, Self

PREFECT_DEFAULTS = {
    # offline-friendly defaults; a user's own settings win
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TOKENIZERS_PARALLELISM": "true",
}


def _setup_env(verbose: bool) -> None:
    """INFO goes to the Prefect server (the UI shows stage and training progress) in every mode; the
    console shows Prefect's own lines only with -v, and otherwise our progress lines and warnings."""
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    console = logging.StreamHandler()  # INFO records reach the API handlers; the console shows them with -v
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[console],
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("llmpipe").setLevel(logging.INFO)
    training = logging.getLogger("llmpipe.pretrain")  # step, loss, tokens/s, ETA while a model trains
    if not verbose and not any(getattr(h, "llmpipe_progress", False) for h in training.handlers):
        handler = logging.StreamHandler(sys.stdout)  # with -v, Prefect's console handler shows them
        handler.setFormatter(logging.Formatter("            %(message)s"))
        handler.llmpipe_progress = True
        training.addHandler(handler)
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)


class QuietUserErrors(logging.Filter):
    """Prefect logs a failed run with its traceback; for a user error the one-line message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.core.errors import RunInterrupted, UserError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (UserError, RunInterrupted)):
            return False  # the CLI prints it once, as its last line
        return not any(name in record.getMessage()
                       for name in ("UserError", "RunInterrupted", "TrainingInterrupted", "StopRequested"))


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietUserErrors) for f in logger.filters):
            logger.addFilter(QuietUserErrors())


def build_parser() -> argparse.ArgumentParser:
    from flows.stages import STAGE_NAMES

    p = argparse.ArgumentParser(prog="llmpipe", description="Train language models end to end with Prefect.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline end to end as a Prefect flow")
    run.add_argument("pipeline", nargs="?", default="demo", help="pipeline name in pipelines.yaml (default: demo)")
    run.add_argument("-c", "--config", help="pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key by dotted path, e.g. --set collect.max_docs=100 (repeatable)")
    run.add_argument("--source", dest="sources", action="append", default=[], metavar="PATH_OR_URL",
                     help="replace the pipeline's sources: a file, glob, directory, http(s) URL, hub dataset "
                          "name, or 'demo' (repeatable)")
    run.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    run.add_argument("--summary", help="also write the run summary JSON here")
    run.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")

    val = sub.add_parser("validate", help="check every pipeline in a config file")
    val.add_argument("-c", "--config")

    sub.add_parser("stages", help="list the stages in order")

    ver = sub.add_parser("verify", help="check a pipeline's finished outputs against their manifests "
                                        "(every file's size and SHA-256)")
    ver.add_argument("pipeline", nargs="?", default="demo")
    ver.add_argument("-c", "--config")
    ver.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ver.add_argument("--source", dest="sources", action="append", default=[], metavar="PATH_OR_URL",
                     help="the sources the run was given with --source, if any")
    ver.add_argument("--sizes-only", action="store_true", help="check sizes only (no reading of every byte)")

    for name, example in (("evaluate", "evaluate.tasks=[sst2,rte]"),
                          ("bias", "bias.limit=200, or --set bias.counterfactual.evaluate_dir=DIR for the "
                                   "classifiers of an evaluate output")):
        one = sub.add_parser(name, help=f"run the {name} stage alone on a model directory (ours or a Hugging "
                                        f"Face causal LM), with a pipeline's {name} settings")
        one.add_argument("pipeline", nargs="?", default="demo",
                         help=f"whose {name}: settings to use (default: demo)")
        one.add_argument("--model", required=True, help="the model directory: the pretrain stage's model/ or hf/, "
                                                        "or a Hugging Face causal LM directory")
        one.add_argument("-c", "--config", help="pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)")
        one.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help=f"override a config key, e.g. --set {example} (repeatable)")
        one.add_argument("--summary", help="also write the run summary JSON here")
        one.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")

    mt = sub.add_parser("maintenance", help="fold new data into the champion: continued pretraining with replay "
                                            "(or a retrain), evaluate, bias, gate, promote or reject")
    _pipeline_args(mt, "maintenance.min_new_docs=100", "also write the run summary JSON (with the maintenance record) here")

    dep = sub.add_parser("deploy", help="register the pipeline's Prefect deployments, work pools and automations "
                                        "with the server in PREFECT_API_URL")
    _pipeline_args(dep)
    dep.add_argument("--prefect-yaml", action="store_true",
                     help="print the deployments as a prefect.yaml instead (infra/prefect.yaml is this for demo)")
    srv = sub.add_parser("serve", help="serve the pipeline's deployments from this process, with their schedules "
                                       "and event triggers (no work pools needed)")
    _pipeline_args(srv)

    pr = sub.add_parser("predict", help="label a text with a classifier the evaluate stage fine-tuned")
    pr.add_argument("model_dir", help="a classifier directory: <evaluate output>/classifiers/<task>")
    pr.add_argument("text")
    pr.add_argument("--pair", help="the second text, for pair tasks (entailment, paraphrase, ...)")

    from flows.models_cli import add_parser as add_models

    add_models(sub)

    show = sub.add_parser("show-config", help="print a pipeline's resolved config as YAML")
    show.add_argument("pipeline", nargs="?", default="demo")
    show.add_argument("-c", "--config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    from flows.forget import add_parser as add_forget_parser
    add_forget_parser(sub)
    return p


def _pipeline_args(p: argparse.ArgumentParser, set_example: str | None = None, summary: str | None = None) -> None:
    """PIPELINE and -c; with `set_example` also --set, and with `summary` also --summary and -v (a flow run)."""
    p.add_argument("pipeline", nargs="?", default="demo", help="pipeline name in pipelines.yaml (default: demo)")
    p.add_argument("-c", "--config", help="pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)")
    if set_example:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config key, e.g. --set {set_example} (repeatable)")
    if summary:
        p.add_argument("--summary", help=summary)
        p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_env(getattr(args, "verbose", False))
    from tasks.core.errors import UserError

    try:
        if getattr(args, "handler", None) is not None:  # subcommands declared elsewhere (flows/forget.py)
            return args.handler(args)
        return {"run": cmd_run, "validate": cmd_validate, "stages": cmd_stages,
                "show-config": cmd_show_config, "verify": cmd_verify, "evaluate": cmd_run, "bias": cmd_run, "maintenance": cmd_run,
                "predict": cmd_predict, "models": cmd_models, "deploy": cmd_deploy,
                "serve": cmd_serve}[args.command](args)
    except UserError as exc:
        print(f"llmpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmpipe: interrupted; rerun the same command to resume (finished work is kept).", file=sys.stderr)
        return 130


def cmd_stages(args: argparse.Namespace) -> int:
    from flows.stages import STAGES

    for i, s in enumerate(STAGES, 1):
        state = "" if s.built else "  (not implemented yet)"
        print(f"{i}. {s.name:<9} {s.summary}{state}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from flows.config import default_config_path, validate_file

    notes = validate_file(args.config)
    path = args.config or default_config_path()
    for name, msgs in notes.items():
        print(f"{name}: ok" + (f" ({'; '.join(msgs)})" if msgs else ""))
    print(f"{path}: {len(notes)} pipelines valid")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from flows.verify import verify_pipeline

    rows = verify_pipeline(args.pipeline, args.config, args.overrides, args.sources, hashes=not args.sizes_only)
    for row in rows:
        detail = row["detail"] if isinstance(row["detail"], str) else "; ".join(row["detail"])
        print(f"  {row['stage']:<9} {row['status']:<12} {detail}")
    damaged = [r["stage"] for r in rows if r["status"] == "damaged"]
    if damaged:
        print(f"llmpipe: damaged: {', '.join(damaged)}; their manifests are withdrawn. Rerun "
              f"`llmpipe run {args.pipeline}` to redo them from what is intact.")
        return 1
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    from flows.config import dump_yaml, load_pipeline

    _, cfg = load_pipeline(args.pipeline, args.config, args.overrides)
    sys.stdout.write(dump_yaml(cfg))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows import deployments

    if args.prefect_yaml:
        sys.stdout.write(deployments.prefect_yaml(args.pipeline, args.config))
        return 0
    check_prefect_server()
    for made in deployments.deploy(args.pipeline, args.config):
        print(f"llmpipe: deployed {made}")
    print("llmpipe: start workers with `prefect worker start --pool <pool>` (see the README: Running on a cluster)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows import deployments

    check_prefect_server()
    deployments.serve(args.pipeline, args.config)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from flows.models_cli import cmd_models as run

    return run(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from tasks.evaluate.finetune import predict

    (label, prob), = predict(args.model_dir, [args.text], [args.pair] if args.pair is not None else None)
    print(label if prob is None else f"{label}\t{prob:.4f}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # first of all: every thread and process started from here on inherits the blocked signals
    with StopOnSignals() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: StopOnSignals) -> int:
    from flows.config import load_pipeline

    # resolve the config and the sources before starting Prefect, so their errors come back in a second
    model = getattr(args, "model", None)
    sources, until = getattr(args, "sources", []), getattr(args, "until", None)
    if model:  # `llmpipe evaluate|bias --model DIR`: that stage alone
        until = args.command
    _, cfg = load_pipeline(args.pipeline, args.config, args.overrides, sources)
    from flows import pipeline

    stages = pipeline.STAGES
    if model:
        from tasks.evaluate.external import model_kind

        model_kind(Path(model))  # a wrong path is reported now, not after Prefect started
        cfg, stages, until = pipeline.model_only(cfg, model, until)
    if args.command != "maintenance":  # maintenance checks each phase's config as it composes it
        pipeline.preflight(cfg, until, remember=True, stages=stages)
    check_prefect_server()

    _quiet_prefect_tracebacks()
    printer = ProgressPrinter()
    print(f"llmpipe: running pipeline '{args.pipeline}' (store: {cfg.store}); starting Prefect...", flush=True)
    from flows.server import send_pending_records, temporary_server
    flow = pipeline.build_pipeline_flow(args.config) if args.config else pipeline.pipeline_flow
    call = lambda: flow(pipeline=args.pipeline, overrides=args.overrides, sources=sources,  # noqa: E731
                        until=until, config_file=args.config, summary_path=args.summary, model=model)
    if args.command == "maintenance":
        from flows import maintenance

        mflow = maintenance.build_maintenance_flow(args.config) if args.config else maintenance.maintenance_flow
        call = lambda: mflow(pipeline=args.pipeline, overrides=args.overrides,  # noqa: E731
                             config_file=args.config, summary_path=args.summary)
    with temporary_server():
        if stop.wait(0) is not None:  # a signal before the flow started: nothing has run yet
            return stop.report(None)
        pipeline._PROGRESS["current"] = printer
        try:
            summary, error = run_in_thread(call, stop)
        finally:
            pipeline._PROGRESS.pop("current", None)
            send_pending_records()  # the run's last log lines reach the server (ours or the user's) now
        if stop.signum is not None and (error is not None or summary is None):
            return stop.report(error)
    if error is not None:
        return _failed(error)
    printer.done(summary)
    if "maintenance" in summary:
        record = summary["maintenance"]
        new = record.get("new") or {}
        print(f"llmpipe: maintenance {record['outcome']}: {new.get('documents', 'n/a')} new documents; champion "
              f"{record.get('champion_before') or 'none'} -> {record.get('champion_after') or 'none'}; record: "
              f"{record['record']}", flush=True)
    return 0 if summary["status"] in ("completed", "partial") else 1


def _failed(exc: BaseException) -> int:
    from tasks.core.errors import RunInterrupted, UserError

    if isinstance(exc, (UserError, KeyboardInterrupt)):
        raise exc
    if isinstance(exc, RunInterrupted):
        print(f"llmpipe: stopped: {exc}", file=sys.stderr)
        print("llmpipe: rerun the same command to resume from the saved checkpoint.", file=sys.stderr)
        return 143
    print(f"llmpipe: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print("llmpipe: finished stages are kept in the store; fix the cause and rerun to resume.", file=sys.stderr)
    return 1


def run_in_thread(call: Callable[[], Any], stop: StopOnSignals) -> tuple[Any, BaseException | None]:
    """Run the flow in a thread while the main thread waits for SIGINT/SIGTERM. Prefect installs its own
    SIGTERM handler only in the main thread (one that raises, leaving stage threads and the process pool
    unattended); in a thread, the flow is left to stop as `stop` asks. Returns (result, exception)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=copy_context().run, args=(target,), name="llmpipe-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        stop.wait(0.2)
    return outcome.get("result"), outcome.get("error")


class StopOnSignals:
    """SIGINT and SIGTERM ask the run to stop: no new stage or shard starts, training writes a checkpoint,
    running shards finish, the temporary server stays up until then; the exit code is 128 + the signal.
    A second signal stops at once (the temporary server is still stopped; finished shards are kept).

    The signals are blocked in this thread from the start, so every thread and process of the run inherits
    the block: a Ctrl-C or `docker stop` sent to the whole process group reaches none of the pool's or
    Dask's workers, only this process, whose main thread takes it with `wait`. Processes that must see
    signals unblock them (the temporary server, the training launcher); the handlers installed here catch
    one that lands in a thread while it does."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._mask: set[int] | None = None

    def __enter__(self) -> Self:
        from tasks.core import stopping

        stopping.clear()
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        # multiprocessing starts its resource tracker (once) with SIGINT/SIGTERM blocked, then UNblocks them
        # in the calling thread: started now, it cannot undo the block below
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # a pending signal reaches _handle here
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def wait(self, seconds: float) -> int | None:
        """Take a pending SIGINT/SIGTERM (waiting up to `seconds`); returns the first stop's signal."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)  # in case a library unblocked them here
        info = signal.sigtimedwait(self.SIGNALS, seconds)
        if info is not None:
            self._handle(info.si_signo, None)
        return self.signum

    def _handle(self, signum: int, frame: Any) -> None:
        from tasks.core import stopping

        if self.signum is None:
            self.signum = signum
            stopping.request_stop(signum)
            print(f"llmpipe: {signal.Signals(signum).name} received: stopping after the running work "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        sys.stdout.flush()
        print(f"llmpipe: {signal.Signals(signum).name} again: stopping now; rerun the same command to resume "
              "(finished work is kept).", file=sys.stderr, flush=True)
        import multiprocessing

        from flows.server import SessionServer

        for worker in multiprocessing.active_children():  # pool workers ignore SIGTERM; unmarked units are redone
            worker.kill()
        for server in list(SessionServer._instances.values()):
            server.stop()
        os._exit(128 + self.signum)

    def report(self, error: BaseException | None) -> int:
        """The last lines after a stop asked for by a signal; returns the exit code."""
        from tasks.core.errors import RunInterrupted
        from tasks.core.stopping import StopRequested

        assert self.signum is not None
        code = 128 + self.signum
        if isinstance(error, RunInterrupted) and not isinstance(error, StopRequested):  # training saved
            print(f"llmpipe: stopped: {error}", file=sys.stderr)
            print("llmpipe: rerun the same command to resume from the saved checkpoint.", file=sys.stderr)
        elif self.signum == signal.SIGINT:
            print("llmpipe: interrupted; rerun the same command to resume (finished work is kept).",
                  file=sys.stderr)
        else:
            print(f"llmpipe: stopped by {signal.Signals(self.signum).name}; rerun the same command to resume "
                  "(finished work is kept).", file=sys.stderr)
        return code


def check_prefect_server(timeout: float = 5.0) -> None:
    """With PREFECT_API_URL set (environment or Prefect profile), that server must answer; otherwise say
    so in one paragraph."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            why = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        why = str(getattr(exc, "reason", exc))
    from tasks.core.errors import UserError

    raise UserError(f"PREFECT_API_URL is set to {url}, but no Prefect server answers there ({why}). Start "
                    "it (`prefect server start`), fix the address, or unset PREFECT_API_URL to let llmpipe "
                    "start a temporary server for this run.")


class ProgressPrinter:
    """Stage-by-stage progress lines with counts and elapsed time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.shown: dict[tuple[str, str], float] = {}

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        stage = info["stage"]
        if event == "start":
            note = " (checking the store)" if info.get("cached") else ""
            print(f"  {stage:<9} running...{note}", flush=True)
            return
        if event == "units":
            self._units(stage, info)
            return
        stats = info.get("stats") or {}
        counts = ""
        if "docs_in" in stats:
            units = info.get("counts") or {}
            unit_in, unit_out = units.get("in", "documents"), units.get("out", "documents")
            dropped = sum((stats.get("dropped") or {}).values())
            written = f", {stats.get('rows_out', 0):,} {unit_out} written" if unit_out != unit_in else ""
            counts = (f"{stats['docs_in']:,} {unit_in} in, {stats.get('docs_out', 0):,} kept{written}, "
                      f"{dropped:,} dropped, {stats.get('quarantined', 0):,} quarantined")
        extra = []
        if "tokens" in stats:
            extra.append(f"tokens {stats['tokens']:,}")
        if stats.get("val_loss") is not None:
            extra.append(f"val loss {stats['val_loss']:.3f} nats (unigram model: "
                         f"{stats.get('val_unigram_baseline_nats') or float('nan'):.3f}, Kneser-Ney bigram: "
                         f"{stats.get('val_bigram_baseline_nats') or float('nan'):.3f})")
        if "tasks_done" in stats:  # evaluate
            skipped = stats.get("tasks_skipped") or []
            extra.append(f"{stats['tasks_done']} tasks scored, {len(skipped)} skipped")
            if stats.get("val_perplexity") is not None:
                extra.append(f"val perplexity {stats['val_perplexity']:.1f}, {stats['val_bits_per_byte']:.3f} bits/byte")
            for suite, name in (("glue", "GLUE"), ("superglue", "SuperGLUE")):
                if stats.get(f"{suite}_finetuned_average") is not None:
                    extra.append(f"{name} fine-tuned {stats[f'{suite}_finetuned_average']:.3f} "
                                 f"(random init {stats[f'{suite}_random_init_average']:.3f})")
        if "checks_done" in stats:  # bias
            extra.append(f"{len(stats['checks_done'])} checks done, {len(stats.get('checks_skipped') or [])} "
                         f"skipped; {len(stats.get('distinguishable_from_chance') or [])} of {stats['figures']} "
                         "figures distinguishable from chance")
            failed, missing = stats.get("thresholds_failed") or [], stats.get("thresholds_not_measured") or []
            extra.append("thresholds: " + (f"FAILED {', '.join(failed)}" if failed else "passed")
                         + (f" ({len(missing)} not measured)" if missing else ""))
        if "decision" in stats:  # register
            extra.append(f"{stats['version']} {'registered' if stats.get('new_version') else '(same model as before)'}"
                         f" in registry {stats['registry']}; gate: {stats['decision']}; champion "
                         f"{stats.get('champion_before') or 'none'} -> {stats.get('champion') or 'none'}")
            if stats.get("rules_failed"):
                extra.append(f"failed: {', '.join(stats['rules_failed'])}")
        counts = "; ".join([c for c in [counts] + extra if c])
        status, err = info["status"], f"  {info.get('error', '')}" if info["status"] == "failed" else ""
        if err.lstrip().startswith(("StopRequested", "TrainingInterrupted", "RunInterrupted")):
            status = "stopped"
        print(f"  {stage:<9} {status:<15} {info.get('seconds', 0):7.1f}s  {counts}{err}", flush=True)

    def _units(self, stage: str, info: dict[str, Any]) -> None:
        """`shards 12/40` lines for a long data stage: at most one every few seconds, and the last one."""
        if info["phase"].startswith("training"):  # the training lines already say it on the console
            return
        key, now = (stage, info["phase"]), time.perf_counter()
        if info["done"] < info["total"] and now - self.shown.get(key, 0.0) < 5.0:
            return
        self.shown[key] = now
        print(f"  {stage:<9} {info['phase']} {info['done']}/{info['total']}", flush=True)

    def done(self, summary: dict[str, Any]) -> None:
        print(f"llmpipe: {summary['status']} in {time.perf_counter() - self.t0:.1f}s; "
              f"summary: {summary['store']}/runs/{summary['run_id']}/summary.json", flush=True)


if __name__ == "__main__":
    sys.exit(main())
