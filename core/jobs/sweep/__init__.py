"""Sweeps: a base config and a grid of settings, trained as normal runs (one after another, one per GPU), decided on validation.

A sweep folder ``models/sweep-<time>-<name>/`` holds ``sweep.json`` (the base config, the grid and
the member run ids, written at creation) beside its coordinator's ``status.json``, ``launch.json``
and ``log.txt``. It has no ``config.json``, so the run store lists only the members, which are
normal runs. The queue is the members' own status files: the coordinator (``python -m core.sweep
--run-dir …``, one process with a heartbeat like a trainer's) starts each member that is new and
resumes one that was interrupted or paused, so a dashboard restart or a killed coordinator loses
nothing. Pause and cancel are request files it polls.

Members share work through the disk cache (``data.cache = "disk"`` on every member): the decoded
images (:func:`core.data.pipeline.load_arrays`) and the frozen layers' outputs (:func:`core.data.frozen.frozen_features`,
keyed by the frozen weights and the pixels), so a member with the same data, image size, backbone
and freeze boundary as an earlier one reads them instead of computing them. Members are not
evaluated on test (``train.evaluate_test = False``): they are compared on the validation
predictions each saves in ``threshold.json``, with a patient-bootstrap CI, and only the final run
trained with the chosen settings sees the test split, once.
"""
from core.jobs.sweep.coordinator import Coordinator, member_slots, run_sweep, visible_gpus
from core.jobs.sweep.grid import AXES, AXIS_LABELS, MAX_MEMBERS, RESERVED, describe, normalize_grid, plan_members
from core.jobs.sweep.results import MemberResult, best_member, create_final_run, sweep_results, validation_figures
from core.jobs.sweep.store import (DONE, ENDINGS, SWEEP_FILE, TO_RUN, Sweep, create_sweep, get_sweep, list_sweeps,
                                   sweep_of_runs)

__all__ = ['MAX_MEMBERS', 'AXES', 'AXIS_LABELS', 'RESERVED', 'normalize_grid', 'describe', 'plan_members', 'SWEEP_FILE', 'TO_RUN', 'DONE', 'ENDINGS', 'Sweep', 'create_sweep', 'list_sweeps', 'get_sweep', 'sweep_of_runs', 'MemberResult', 'validation_figures', 'sweep_results', 'best_member', 'create_final_run', 'visible_gpus', 'member_slots', 'Coordinator', 'run_sweep']
