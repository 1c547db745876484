"""Records: the run folder and sweep folder format. The one finished-run type, the one run
status, every file name, and every read and write of those folders go through here.

Knows nothing of how runs were executed. Writes are atomic (bnlab._atomic); reads check each
file against the others, so a damaged record is named, never trusted (docs/reliability.md).
"""

from bnlab.records._encode import UnreadableRecord, csv_bytes, json_bytes, remove_temps, strict_json, write_file
from bnlab.records._files import (
    ARMS,
    CONFIG,
    CURVES,
    DEFAULT_RUNS_DIR,
    EPOCHS,
    ERROR,
    EVALS,
    FORMAT_VERSION,
    INVOCATIONS,
    LAYERS,
    LOCK,
    LOCK_PID,
    METRICS_CSVS,
    OPTIONAL_CSVS,
    PROBES,
    RESULTS,
    SPEC,
    STEPS,
    SUMMARY,
    SWEEP_STATE,
    WEIGHTS,
    run_folder,
    runs_dir,
)
from bnlab.records._run import (
    CHANCE_LOSS,
    DID_NOT_TRAIN,
    FINISHED_STATUSES,
    RUN_STATUSES,
    EditedConfig,
    FinishedRun,
    RunFolder,
    check_not_edited,
    finished_run,
    inspect_run,
    read_config,
    read_finished,
    read_metrics_csv,
    read_summary,
    run_status,
)
from bnlab.records._sweep import (
    MAIN_PANEL,
    RESULT_METRICS,
    SweepRecord,
    append_invocation,
    arms_path,
    read_arms,
    read_invocations,
    read_sweep_record,
    result_row,
    spec_path,
    validate_store,
    write_arms,
    write_results,
    write_sweep_start,
)
from bnlab.records._tree import read_runs, run_folders

__all__ = [
    "ARMS", "CHANCE_LOSS", "CONFIG", "CURVES", "DEFAULT_RUNS_DIR", "DID_NOT_TRAIN", "EPOCHS", "ERROR", "EVALS",
    "FINISHED_STATUSES", "FORMAT_VERSION", "INVOCATIONS", "LAYERS", "LOCK", "LOCK_PID", "MAIN_PANEL", "METRICS_CSVS",
    "OPTIONAL_CSVS", "PROBES", "RESULTS", "RESULT_METRICS", "RUN_STATUSES", "SPEC", "STEPS", "SUMMARY",
    "SWEEP_STATE", "WEIGHTS", "EditedConfig", "FinishedRun", "RunFolder", "SweepRecord", "UnreadableRecord",
    "append_invocation", "arms_path", "check_not_edited", "csv_bytes", "finished_run", "inspect_run", "json_bytes",
    "read_arms", "read_config", "read_finished", "read_invocations", "read_metrics_csv", "read_runs",
    "read_summary", "read_sweep_record", "remove_temps", "result_row", "run_folder", "run_folders", "run_status",
    "runs_dir", "spec_path", "strict_json", "validate_store", "write_arms", "write_file", "write_results",
    "write_sweep_start",
]
