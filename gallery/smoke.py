"""A smoke test for your CI: every example's pattern for a few steps on embedded data, with its
probe.

    python -m gallery smoke                         # CPU (or CUDA when present: device=auto)
    python -m gallery smoke device=cuda junit=smoke.xml examples=gan,tbptt

One line per example (PASS or FAIL, the seconds it took, what the probe saw), a JUnit XML file when
asked, and a non-zero exit status when any pattern's probe fails or a run breaks. Each example says
what its probe is (`EXAMPLE.check`) and what a seconds-long run is (`EXAMPLE.smoke`).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from xml.etree import ElementTree

from gallery.core.cli import compose
from gallery.core.registry import examples

USAGE = ("usage: python -m gallery smoke [device=auto|cpu|cuda|cuda:N] [junit=path.xml] "
         "[examples=gan,dqn,...]")


def run(device: str = "auto", names: list[str] | None = None) -> list[dict]:
    results = []
    known = examples()
    for name in names or list(known):
        example = known[name]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            overrides = example.smoke_overrides(tmp)
            try:
                summary = example.module.train(compose(name,
                                                       [*overrides, f"device={device}",
                                                        f"out_dir={tmp}/run"]))
                failure = example.check(summary)
                detail = failure or example.headline(summary)
            except Exception as err:  # a broken run fails the smoke test, with its reason
                first_line = str(err).splitlines()[0] if str(err) else ""
                failure = detail = f"{type(err).__name__}: {first_line}"
                summary = {"traceback": traceback.format_exc()}
        results.append({"example": name, "passed": failure is None, "detail": detail,
                        "seconds": time.perf_counter() - start,
                        "device": summary.get("device", device),
                        "traceback": summary.get("traceback")})
    return results


def junit(results: list[dict], path: str) -> None:
    suite = ElementTree.Element("testsuite", name="detach-gallery smoke", tests=str(len(results)),
                                failures=str(sum(not r["passed"] for r in results)),
                                time=f"{sum(r['seconds'] for r in results):.3f}")
    for r in results:
        case = ElementTree.SubElement(suite, "testcase", classname="gallery.smoke",
                                      name=r["example"], time=f"{r['seconds']:.3f}")
        if not r["passed"]:
            failure = ElementTree.SubElement(case, "failure", message=r["detail"])
            failure.text = r["traceback"] or r["detail"]
    ElementTree.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if len(args) != len(argv) or set(args) - {"device", "junit", "examples"}:
        print(USAGE, file=sys.stderr)
        return 2
    names = [n for n in args.get("examples", "").split(",") if n]
    unknown = set(names) - set(examples())
    if unknown:
        print(f"error: examples: {', '.join(sorted(unknown))} is not an example; choose from "
              f"{', '.join(examples())}", file=sys.stderr)
        return 2
    results = run(args.get("device", "auto"), names)
    for r in results:
        print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['example']:9s} {r['seconds']:5.1f} s  "
              f"{r['device']:6s}  {r['detail']}")
    if "junit" in args:
        junit(results, args["junit"])
    failed = [r["example"] for r in results if not r["passed"]]
    names = f": {', '.join(failed)}" if failed else ""
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed{names}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
