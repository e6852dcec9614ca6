"""``python -m bench [SUITE ...] [--quick]``: run benchmark suites, write bench/results/<suite>.json and
regenerate bench/RESULTS.md.

Suites: quality (real data through the real pipeline), speed (vs the HF Trainer at its defaults and at its
best flags: alternating rounds, or ``--suite tta`` time to accuracy), e2e (a whole tuned fine-tuning:
``tuneflow run`` vs ``Trainer.hyperparameter_search`` + train; its own options: ``python -m bench e2e
--help``), overhead (orchestration share of a
pipeline run), coldstart (fresh clone -> make demo), gpu (skipped without a GPU). ``python -m bench field``:
the real CLI on every data set and edge shape (bench/field.py). ``python -m bench open_intents``: questions
about intents the model was never taught (bench/open_intents.py). ``python -m bench fewshot``: few-shot mode
against fine-tuning at 5-64 examples per class (bench/fewshot.py). ``python -m bench label_loop``: the
labelling loop against random labelling in simulated rounds (bench/label_loop.py). Also: search_pruning and
lora_vs_full (their own modules: ``python -m bench.search_pruning`` ...).
"""

from __future__ import annotations

import argparse

from bench.common import write_result, write_table

SUITES = ("quality", "speed", "e2e", "overhead", "coldstart", "gpu")


def main() -> None:
    import sys

    if sys.argv[1:2] == ["field"]:  # the field matrix has its own options (python -m bench field --help)
        from bench import field

        field.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["e2e"]:  # its own options (python -m bench e2e --help)
        from bench import e2e

        e2e.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["fewshot"]:  # its own options too (python -m bench fewshot --help)
        from bench import fewshot

        fewshot.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["label_loop"]:  # its own options too (python -m bench label_loop --help)
        from bench import label_loop

        label_loop.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["open_intents"]:  # its own options too (python -m bench open_intents --help)
        from bench import open_intents

        open_intents.main(sys.argv[2:])
        return
    from bench import coldstart, e2e, gpu, overhead, quality, speed

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "suites", nargs="*", choices=[*SUITES, []], help=f"default: all of {', '.join(SUITES)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller subsets (stated in the table)")
    parser.add_argument(
        "--only",
        action="append",
        help="quality: only these runs (banking77, sst2, wnut17, sst2_full, sst2_full_mean, sst2_full_lr1e4):"
        " written as quality-<names>.json",
    )
    parser.add_argument(
        "--banking77-server",
        action="store_true",
        help="overhead: also run BANKING77 through a running Prefect server (~8 min)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="overhead: rounds of the demo runs (median)")
    parser.add_argument(
        "--demo-only",
        action="store_true",
        help="overhead: only the demo rows, written as overhead-demo.json (the stored runs' rows stay)",
    )
    speed.add_arguments(parser)  # --train, --epochs, --threads, --model: e2e reads them too
    args = parser.parse_args()
    if args.quick:
        args.train, args.epochs, args.pairs = min(args.train, 1000), 1, 3
    for suite in args.suites or SUITES:
        print(f"== {suite}", flush=True)
        if suite == "quality":
            payload = quality.run(args.quick, args.only)
        elif suite == "speed":
            payload = speed.run(args)
        elif suite == "e2e":  # its defaults (python -m bench e2e --help), --quick's budget
            e2e_args = e2e.parse([])
            if args.quick:
                e2e_args.train, e2e_args.epochs, e2e_args.seeds = args.train, args.epochs, "42"
            payload = e2e.run(e2e_args)
        elif suite == "overhead":
            payload = overhead.run(args.quick, args.banking77_server, args.repeat, args.demo_only)
        elif suite == "coldstart":
            payload = coldstart.run(args.quick)
        else:
            payload = gpu.run(args)
        name = suite
        if suite == "speed":
            name = speed.result_name(args)
        elif suite == "e2e":
            name = e2e.result_name(e2e_args)
        if suite == "quality" and args.only:  # a partial rerun keeps the full suite's result
            name = "quality-" + "-".join(sorted(args.only))
        if suite == "overhead" and args.demo_only:
            name = "overhead-demo"
        print(f"wrote {write_result(name, payload)}", flush=True)
        write_table()


if __name__ == "__main__":
    main()
