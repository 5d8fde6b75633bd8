"""``python -m bsb_hydra [-m] [overrides...]``: one cell per Hydra job.

Exit status: 0 when every cell ended ok, skipped or unsupported; 1 when a cell failed (a sweep
prints its whole table first) or the config or overrides are refused; 128 + the signal's number
when SIGINT (130), SIGTERM (143) or SIGHUP ended it, the open cell's run closed KILLED with the
reason."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bsb_hydra.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    import sys
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bsb_hydra.config import ConfigError, validate
    from bsb_hydra.cell import run_cell

    if HydraConfig.get().mode == RunMode.RUN:
        # One cell: a bad value is a usage error, refused before anything is logged (a sweep's
        # sweeper refuses it the same way before its first job).
        try:
            validate(cfg)
        except ConfigError as e:
            print(f"Error in the config: {e}", file=sys.stderr)
            sys.exit(1)
    from bsb_hydra import summary

    try:
        status = run_cell(cfg)["status"]
    except Exception:  # e.g. the MLflow store failing while the run is closed: report, go on
        print(f"[failed] cell could not be recorded:\n{traceback.format_exc()}", flush=True)
        status = "failed"
    if status == "failed":  # a sweep's cells are counted from their result.json (summary.SweepSummary)
        summary.FAILED.append(status)


if __name__ == "__main__":
    import sys

    from bsb_hydra.config import ConfigError, check_group_overrides, defer_group_keys, snapshot_conf

    sys.argv[1:] = defer_group_keys(sys.argv[1:])
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"Error in the overrides: {e}", file=sys.stderr)
        sys.exit(1)
    from bsb_hydra import local_state, summary

    local_state.handle_termination()  # SIGTERM / SIGHUP unwind like Ctrl-C
    try:
        local_state.process_tmp()  # TMPDIR: this user's, this process's; removed on every exit
    except local_state.PrivateDirError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        sys.argv[1:] = snapshot_conf(sys.argv[1:])  # a sweep reads conf/ as it was when it started
        main()
    except (KeyboardInterrupt, local_state.Interrupted) as e:
        name = e.signame if isinstance(e, local_state.Interrupted) else "SIGINT"
        print(f"\nInterrupted by {name}: the open cell's run is closed KILLED with the reason; the same "
              "command resumes (finished cells are skipped)", file=sys.stderr, flush=True)
        sys.exit(local_state.exit_code_of(e))
    local_state.exit_now(1 if summary.FAILED else 0)
