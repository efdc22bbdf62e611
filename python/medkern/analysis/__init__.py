"""From a study and the patient's context to findings, a stage and guideline-based options.

    report = mk.analyze("study/", patient="patient.json")   # model and guideline chosen for the study
    report.write("out/")                                      # report.json/.html, NIfTI, DICOM SEG + SR

Research decision support, not a medical device: every number is traceable to the image, every
recommendation to its published source, and missing patient data is reported, never guessed.
"""

from __future__ import annotations

from medkern.analysis.analyze import DEFAULT_MODELS, analyze
from medkern.analysis.report import DISCLAIMER, Report, report_schema, validate_report

__all__ = ["analyze", "DEFAULT_MODELS", "DISCLAIMER", "Report", "report_schema", "validate_report"]
