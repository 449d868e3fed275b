"""The ``sp-prm`` command: dispatches each subcommand to its package's own entry point."""

from __future__ import annotations

import importlib
import sys

from sp_prm.errors import guarded
from sp_prm.runtime import limit_heap_retention

# subcommand -> (module with a main(argv) function, one-line description)
COMMANDS = {
    "prepare": ("data_prep.prepare", "build TLT/SST partial-pair datasets with reference-RM weights"),
    "train": ("sp_prm.train", "train an SP-PRM (weighted / unweighted) or an ORM reward model"),
    "merge": ("sp_prm.merge", "merge a LoRA reward-model adapter into a plain checkpoint"),
    "decode": ("decoding.decode", "reward-guided decoding: Best-of-N / DVTS with REAR, GenRM or an RM"),
    "evaluate-rm": ("decoding.process_value", "accuracy / agreement of reward models on full and partial responses"),
    "metrics": ("decoding.metrics.run", "reward, diversity, coherence, ROUGE-L, GSM8K, AdvBench ASR, LLM judge"),
}


def usage() -> str:
    lines = ["usage: sp-prm [--debug] <command> --config recipe.yaml [--key value ...]", "", "commands:"]
    lines += [f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`sp-prm <command> --help` lists every option with its help text.",
              "--debug (anywhere) prints the traceback of a user error too."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sp-prm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    limit_heap_retention()  # only with SP_PRM_MALLOC_TUNING=1: see sp_prm/runtime.py
    guarded(name, lambda: importlib.import_module(COMMANDS[name][0]).main(rest), debug)


if __name__ == "__main__":
    main()
