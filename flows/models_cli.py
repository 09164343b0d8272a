"""`llmpipe models ...`: list, show, promote, roll back and alias the versions of a pipeline's registry."""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the model registry: list | show VERSION | promote VERSION | rollback "
                                           "| alias NAME VERSION | history")
    models.add_argument("-p", "--pipeline", default="demo", help="whose store and registry (default: demo)")
    models.add_argument("-c", "--config", help="pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set store=/data/store")
    models.add_argument("--registry", help="the registry's name (default: register.name, else the pipeline's name)")
    act = models.add_subparsers(dest="action", required=True)
    act.add_parser("list", help="every version: status, aliases, created, validation loss, averages")
    show = act.add_parser("show", help="one version: metrics, lineage, model card path, and the metric history")
    show.add_argument("version", nargs="?", help="a version (v3) or an alias (champion); default: the champion")
    promote = act.add_parser("promote", help="make a version the champion (recorded as a manual change)")
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual promotion")
    promote.add_argument("--force", action="store_true", help="also a tainted version")
    back = act.add_parser("rollback", help="the champion goes back to the version it replaced")
    back.add_argument("--reason", default="manual rollback")
    alias = act.add_parser("alias", help="point an alias (e.g. staging) at a version")
    alias.add_argument("name")
    alias.add_argument("version", help="a version, or 'none' to remove the alias")
    alias.add_argument("--reason", default="manual alias change")
    act.add_parser("history", help="every alias change and gate decision, oldest first")


def open_registry(args: argparse.Namespace):
    from flows.config import load_pipeline
    from tasks.register.registry import Registry

    name, cfg = load_pipeline(args.pipeline, args.config, args.overrides)
    return Registry(cfg.store, args.registry or cfg.register.name or name)


def cmd_models(args: argparse.Namespace) -> int:
    from tasks.core.errors import UserError
    from tasks.register.registry import CHAMPION, who

    reg = open_registry(args)
    if not reg.exists():
        raise UserError(f"no registry {reg.name!r} in {reg.store.root}: run the pipeline (`llmpipe run "
                        f"{args.pipeline}`) to register a model, or name another with --registry / -p")
    if args.action == "list":
        _print_list(reg)
    elif args.action == "show":
        _print_show(reg, _resolve(reg, args.version or CHAMPION))
    elif args.action == "promote":
        version = _resolve(reg, args.version)
        entry = reg.state()["versions"][version]
        if entry["status"] == "tainted" and not args.force:
            raise UserError(f"{version} is tainted ({entry.get('taint', {}).get('reason')}): it was trained on a "
                            "forgotten source. Promote another version, or add --force to promote it anyway")
        _print_event(reg.set_alias(CHAMPION, version, f"manual ({who()})", args.reason))
    elif args.action == "rollback":
        _print_event(reg.rollback(f"manual ({who()})", args.reason))
    elif args.action == "alias":
        version = None if args.version.lower() == "none" else _resolve(reg, args.version)
        _print_event(reg.set_alias(args.name, version, f"manual ({who()})", args.reason))
    elif args.action == "history":
        for event in reg.history():
            _print_event(event)
        for d in reg.decisions():
            print(f"{d['recorded']}  gate {d['decision']:<7} {d['challenger']} vs {d['champion'] or 'none'}: "
                  f"{'; '.join(d['reasons'])}")
    return 0


def _resolve(reg: Any, name: str) -> str:
    from tasks.core.errors import UserError

    state = reg.state()
    if name in state["versions"]:
        return name
    if name in state["aliases"]:
        return state["aliases"][name]
    raise UserError(f"registry {reg.name!r} has no version or alias {name!r} (versions: "
                    f"{', '.join(reg.versions()) or 'none'}; aliases: {', '.join(state['aliases']) or 'none'})")


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))


def _print_list(reg: Any) -> None:
    from tasks.register.report import history_rows

    rows = history_rows(reg)
    print(f"registry {reg.name} ({reg.root})")
    print(f"{'version':<8} {'status':<8} {'aliases':<16} {'created':<26} {'val_loss':>9} {'bits/byte':>9} "
          f"{'glue':>7} {'superglue':>9}")
    for r in rows:
        print(f"{r['version']:<8} {r['status']:<8} {r['aliases']:<16} {r['created']:<26} {_num(r['val_loss']):>9} "
              f"{_num(r['val_bits_per_byte']):>9} {_num(r.get('glue_average')):>7} {_num(r.get('superglue_average')):>9}")
    if (need := reg.needs_retrain()) is not None:
        print(f"the champion {need['champion']} needs a retrain: {need['reason']} (audit {need['audit']})")


def _print_show(reg: Any, version: str) -> None:
    from tasks.register.report import history_markdown, history_plot

    info = reg.info(version)
    m, lin = info["metrics"] or {}, info["lineage"] or {}
    print(f"{reg.name} {version}: {info['status']}" + (f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""))
    if info.get("taint"):
        print(f"  tainted: {info['taint']['reason']} (audit {info['taint']['audit']}, {info['taint']['when']})")
    print(f"  created {info['created']}, digest {info['digest']}, parent {lin.get('parent') or 'none'}")
    print(f"  files: {info['path']} (model/, hf/, card.md, metrics.json, lineage.json)")
    pre, ev, bias = m.get("pretrain") or {}, m.get("evaluate") or {}, m.get("bias") or {}
    print(f"  training: {pre.get('steps')} steps, {pre.get('tokens')} tokens, val loss {_num(pre.get('val_loss'))} "
          f"(unigram {_num(pre.get('val_unigram_baseline_nats'))})")
    if ev:
        avgs = ", ".join(f"{k} {_num(v)}" for k, v in sorted((ev.get("averages") or {}).items()) if v is not None)
        print(f"  evaluate: {len(ev.get('tasks') or {})} tasks, bits/byte {_num(ev.get('val_bits_per_byte'))}; {avgs}")
    if bias:
        v = bias.get("verdict") or {}
        print(f"  bias: thresholds {'passed' if v.get('passed') else 'FAILED ' + ', '.join(v.get('failed') or [])}"
              f", {len(v.get('not_measured') or [])} not measured, {len(bias.get('figures') or {})} figures")
    print(f"  data: {json.dumps({k: d.get('digest') for k, d in (lin.get('data') or {}).items()})}")
    print("  sources: " + ", ".join(f"{n} ({c.get('docs_out')} documents)" for n, c in (lin.get("sources") or {}).items()))
    print()
    print(history_markdown(reg))
    png = history_plot(reg, reg.root / "history.png")
    if png:
        print(f"\nplot: {png}")


def _print_event(e: dict[str, Any]) -> None:
    print(f"{e['when']}  {e['alias']}: {e['from'] or 'none'} -> {e['to'] or 'none'} by {e['by']}: {e['why']}")
