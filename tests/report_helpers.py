"""Hand-made benchmark reports (outcomes chosen by the test, the report built by the real report builder),
and the JUnit schema's rules as a check.

The outcomes (which samples are clean-correct, which are robust at each eps, the labels)
are the test's; the report around them is what :func:`bastion.evaluation.report.build_report`
writes, so it follows the schema exactly, and :func:`as_earlier_report` strips it back to
the fields a ``bastion.bench.report/1`` report had before intervals were added.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from bastion.evaluation.report import build_report
from bastion.evaluation.state import Fingerprint, Indicator, RunState, Unit

DEFAULT_ATTACKS = ({"label": "pgd", "name": "pgd", "family": "white-box", "params": {"steps": 10}},)


class HandSuite:
    """The parts of a Suite the report builder reads."""

    def __init__(self, epsilons, norm="linf", name="hand", attacks=DEFAULT_ATTACKS):
        self.epsilons, self.norm, self.name, self.attacks = tuple(epsilons), norm, name, attacks

    def to_dict(self):
        return {"name": self.name, "description": "hand-made", "path": "hand.toml", "sha256": "0" * 64,
                "norm": self.norm, "eps": list(self.epsilons), "attacks": [dict(a) for a in self.attacks]}


def hand_made_report(robust: dict[float, set[int]], *, n: int = 20, clean: set[int] | None = None,
                     labels: list[int] | None = None, num_classes: int = 4, model: str = "m",
                     data_sha256: str = "d" * 64, norm: str = "linf", attacks=DEFAULT_ATTACKS,
                     fired: tuple[str, ...] = ()) -> dict:
    """A report of ``n`` samples where ``robust[eps]`` are the samples robust at each eps (nested as eps grows).

    One attack per eps breaks the clean-correct samples that are not robust there.
    ``labels`` default to ``i % num_classes``; ``fired`` names attack-failure indicators that fired.
    """
    clean = set(range(n)) if clean is None else set(clean)
    epsilons = sorted(robust)
    units = [Unit(eps=eps, attack="pgd", name="pgd", family="white-box", params={"steps": 10}, standing=len(clean),
                  broken=tuple(sorted(clean - robust[eps])), seconds=0.123456789, loss_trace=(0.1234567891, 0.2))
             for eps in epsilons]
    indicators = tuple(Indicator(key=k, title=k, status="fired", finding="found", meaning="m", advice="a")
                       for k in fired)
    fingerprint = Fingerprint(model_sha256="0", data_sha256=data_sha256, n=n, suite_sha256="0", norm=norm,
                              eps=tuple(epsilons), seed=0)
    state = RunState(fingerprint=fingerprint, samples=tuple(range(n)), clean_correct=tuple(sorted(clean)),
                     units=tuple(units), indicators=indicators)
    y = torch.tensor(labels if labels is not None else [i % num_classes for i in range(n)])
    run = {"model": {"name": model, "source": model, "sha256": "0" * 64},
           "data": {"name": "hand", "n": n, "sha256": data_sha256}}
    return build_report(state, HandSuite(epsilons, norm, attacks=attacks), y, num_classes, run=run)


def as_earlier_report(report: dict) -> dict:
    """``report`` as a /1 report written before intervals: no ``*_ci`` fields, no ``intervals``."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("_ci") and k != "intervals"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(json.dumps(report)))


def write_run(directory: Path, report: dict) -> Path:
    """A run directory holding ``report`` as report.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report))
    return directory


#: junit-10.xsd (Jenkins xunit, the Surefire format GitLab and GitHub reporters read): what each element may hold.
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")
REQUIRED = {"testsuite": {"name", "tests", "failures", "errors"}, "testcase": {"name"}, "property": {"name", "value"}}
ALLOWED = {"testsuites": {"name", "time", "tests", "failures", "errors"},
           "testsuite": {"name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp", "hostname",
                         "id", "package", "file", "log", "url"},
           "testcase": {"name", "time", "classname", "group"}, "failure": {"type", "message"},
           "error": {"type", "message"}, "skipped": {"type", "message"}, "properties": set(),
           "property": {"name", "value"}, "system-out": set(), "system-err": set()}
CHILDREN = {"testsuites": {"testsuite"}, "testsuite": {"testsuite", "properties", "testcase", "system-out", "system-err"},
            "testcase": {"skipped", "error", "failure", "system-out", "system-err"}, "properties": {"property"},
            "failure": set(), "error": set(), "skipped": set(), "property": set(), "system-out": set(),
            "system-err": set()}


def check_junit_schema(element: ET.Element) -> None:
    """Fail if ``element`` (and its tree) breaks junit-10.xsd's element, attribute or time rules."""
    assert element.tag in ALLOWED, element.tag
    assert REQUIRED.get(element.tag, set()) <= set(element.attrib), (element.tag, element.attrib)
    assert set(element.attrib) <= ALLOWED[element.tag], (element.tag, element.attrib)
    if element.tag in ("testsuites", "testsuite") and "time" in element.attrib:
        assert SUREFIRE_TIME.fullmatch(element.attrib["time"]), element.attrib["time"]
    for child in element:
        assert child.tag in CHILDREN[element.tag], (element.tag, child.tag)
        check_junit_schema(child)
