"""Quality benchmark: named rows trained on real X-rays over several seeds and their ensemble, tabled against targets.

``python -m benchmarks.quality --help`` tells the whole story. One module per job, imports pointing one way:

- ``paths``: where it reads and writes;  ``rows``: published results and our rows (presets as data);
- ``targets``: the issue's targets and their check;  ``orchestrate``: configs, seed runs and ensembles;
- ``results``: run files copied with portable paths;  ``summary``: every figure as summary.json;
- ``render``: the Markdown report;  ``splice``: its section of RESULTS-quality.md;
- ``flags``: the flags shared with benchmarks.recipe_choice;  ``cli``: the command itself.

The public names of every module are re-exported here, so ``benchmarks.quality.<name>`` keeps working.
"""
from __future__ import annotations

from benchmarks.quality.paths import (DEFAULT_KAGGLE, DEFAULT_MEDMNIST, MOBILENET_025_FILE, MOBILENETV2_035_FILE,
                                      OFFICIAL_TEST_IMAGES, REPO, REPORT_FILE, RESULT_FILES, RESULTS_DIR, SHARED,
                                      WEIGHTS)
from benchmarks.quality.rows import (HEADLINE, KAGGLE_DEFAULT_ROWS, KAGGLE_ROWS, LABELS, MEDMNIST_DEFAULT_ROWS,
                                     MEDMNIST_ROWS, PUBLISHED, PublishedRow, Row)
from benchmarks.quality.targets import TARGETS, Target, TargetCheck, check_targets, describe
from benchmarks.quality.orchestrate import (RowOutcome, RowResult, Say, build_config, follow_run, preflight_weights,
                                            resolve_data, reusable_run, run_ensemble, run_row, run_seeds, seed_config,
                                            weights_label)
from benchmarks.quality.results import (copy_row_results, copy_run_files, path_roots, portable, portable_arg,
                                        portable_text)
from benchmarks.quality.summary import (baseline_row, build_summary, machine_description, merge_summary, row_entry,
                                        run_entry)
from benchmarks.quality.render import build_report, render_report, wilson
from benchmarks.quality.splice import SECTION_END, SECTION_START, start_marker, write_section
from benchmarks.quality.flags import OVERRIDES, row_flags
from benchmarks.quality.cli import DESCRIPTION, build_parser, is_smoke, main, select_rows

__all__ = ["DEFAULT_KAGGLE", "DEFAULT_MEDMNIST", "MOBILENET_025_FILE", "MOBILENETV2_035_FILE",
           "OFFICIAL_TEST_IMAGES", "REPO", "REPORT_FILE", "RESULT_FILES", "RESULTS_DIR", "SHARED", "WEIGHTS",
           "HEADLINE", "KAGGLE_DEFAULT_ROWS", "KAGGLE_ROWS", "LABELS", "MEDMNIST_DEFAULT_ROWS", "MEDMNIST_ROWS",
           "PUBLISHED", "PublishedRow", "Row", "TARGETS", "Target", "TargetCheck", "check_targets", "describe",
           "RowOutcome", "RowResult", "Say", "build_config", "follow_run", "preflight_weights", "resolve_data",
           "reusable_run", "run_ensemble", "run_row", "run_seeds", "seed_config", "weights_label",
           "copy_row_results", "copy_run_files", "path_roots", "portable", "portable_arg", "portable_text",
           "baseline_row", "build_summary", "machine_description", "merge_summary", "row_entry", "run_entry",
           "build_report", "render_report", "wilson", "SECTION_END", "SECTION_START", "start_marker",
           "write_section", "OVERRIDES", "row_flags", "DESCRIPTION", "build_parser", "is_smoke", "main",
           "select_rows"]
