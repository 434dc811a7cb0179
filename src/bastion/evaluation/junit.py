"""JUnit XML for CI systems: one test suite per benchmark run (or comparison), one test case per check.

The shape is the one Jenkins' xunit/junit plugins, GitLab's ``artifacts:reports:junit`` and
the GitHub Actions test reporters read (the Surefire-derived ``junit-10.xsd``):
``<testsuites>`` holding one ``<testsuite name tests failures errors skipped time
timestamp>``, with ``<properties>`` (what was measured) and one ``<testcase name
classname time>`` per check, a failed one holding ``<failure message type>`` with the
details as text, a skipped one ``<skipped message>``. Times are plain decimals (the
schema's pattern has no exponent); the timestamp is ISO 8601 without a zone (UTC).
Written atomically.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.fsutil import atomic_write_text

INDICATORS = "bastion.bench.indicators"
#: Characters XML 1.0 cannot hold at all (even escaped): dropped from every name and message.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Case:
    """One check: passed unless it has a ``failure`` (its message) or was ``skipped`` (why)."""

    name: str
    classname: str
    failure: str | None = None
    failure_type: str = "check-failed"
    details: str = ""  # the failure's text, or the passed case's system-out
    skipped: str | None = None
    seconds: float = 0.0


def indicator_cases(report: dict[str, Any]) -> list[Case]:
    """One case per attack-failure indicator of a bench report: fired = failed, skipped = skipped."""
    cases = []
    for indicator in report.get("indicators", []):
        name = f"{indicator['key']}: {indicator.get('title', indicator['key'])}"
        finding = indicator.get("finding", "")
        if indicator["status"] == "fired":
            advice = f"{indicator.get('meaning', '')} What to do: {indicator.get('advice', '')}".strip()
            cases.append(Case(name, INDICATORS, failure=finding, failure_type="indicator-fired",
                              details=f"{finding}\n{advice}"))
        elif indicator["status"] == "skipped":
            cases.append(Case(name, INDICATORS, skipped=finding or "skipped"))
        else:
            cases.append(Case(name, INDICATORS, details=finding))
    return cases


def junit_xml(suite: str, cases: list[Case], *, seconds: float = 0.0, timestamp: str = "",
              properties: dict[str, Any] | None = None) -> str:
    """The JUnit XML document of one test suite named ``suite`` (see the module docstring)."""
    failures = sum(1 for c in cases if c.failure is not None)
    skipped = sum(1 for c in cases if c.failure is None and c.skipped is not None)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0"}
    suite = _xml_text(suite)
    root = ET.Element("testsuites", {"name": suite, **counts, "time": _time(seconds)})
    attributes = {"name": suite, **counts, "skipped": str(skipped), "time": _time(seconds)}
    if timestamp:
        attributes["timestamp"] = timestamp.removesuffix("Z")
    testsuite = ET.SubElement(root, "testsuite", attributes)
    if properties:
        table = ET.SubElement(testsuite, "properties")
        for key, value in properties.items():
            ET.SubElement(table, "property", {"name": _xml_text(key), "value": _xml_text(value)})
    for case in cases:
        element = ET.SubElement(testsuite, "testcase", {"name": _xml_text(case.name),
                                                        "classname": _xml_text(case.classname),
                                                        "time": _time(case.seconds)})
        if case.failure is not None:
            failure = ET.SubElement(element, "failure", {"message": _xml_text(case.failure),
                                                         "type": _xml_text(case.failure_type)})
            failure.text = _xml_text(case.details or case.failure)
        elif case.skipped is not None:
            ET.SubElement(element, "skipped", {"message": _xml_text(case.skipped)})
        elif case.details:
            ET.SubElement(element, "system-out").text = _xml_text(case.details)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, suite: str, cases: list[Case], **kwargs: Any) -> Path:
    """Write :func:`junit_xml` to ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, junit_xml(suite, cases, **kwargs))
    return path


def _xml_text(value: Any) -> str:
    return _NOT_XML.sub("", str(value))


def _time(seconds: float) -> str:
    return f"{max(0.0, float(seconds)):.2f}"
