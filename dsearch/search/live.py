"""The live trial table of `dsearch run` (rich), fed by Ray Tune events in the driver."""

from __future__ import annotations

import time
from typing import Any

from ..metrics import EPOCH, EPOCH_TIME, MACS, MEMORY, PARAMS, VAL_ACC
from ..net.cost import format_bytes


class LiveView:
    """Trial, state, epoch, val_acc, params, MACs, best so far, ETA; a plain line per event if not a TTY."""

    def __init__(self, max_epochs: int, num_samples: int, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.max_epochs, self.num_samples = max_epochs, num_samples
        self.rows: dict[str, dict[str, Any]] = {}
        self.best = float("nan")
        self.t0 = time.time()
        self.epoch_times: list[float] = []
        self.live = None
        self.enabled = enabled
        if enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "LiveView":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def _say(self, text: str) -> None:
        if self.live is not None:
            self.live.update(self._table())
        elif self.enabled:
            self.console.print(text, highlight=False)

    def started(self, trial_id: str, number: Any, config: dict) -> None:
        self.rows[trial_id] = {"trial": number, "state": "RUNNING", EPOCH: 0, VAL_ACC: None,
                               PARAMS: config.get(PARAMS), MACS: config.get(MACS), "t": time.time()}
        memory = ""
        if config.get(MEMORY):
            path = "memory-efficient" if config.get("run", {}).get("model", {}).get("memory_efficient") else "normal"
            memory = f", step peak ≈ {format_bytes(config[MEMORY])} ({path} path)"
        self._say(f"trial {number}: started ({config.get(PARAMS, 0):,} params, {config.get(MACS, 0):,} MACs{memory})")

    def result(self, trial_id: str, result: dict) -> None:
        row = self.rows.get(trial_id)
        if row is None or VAL_ACC not in result:
            return
        row[EPOCH], row[VAL_ACC] = result.get(EPOCH, 0), result[VAL_ACC]
        if EPOCH_TIME in result:
            self.epoch_times.append(result[EPOCH_TIME])
        if not self.best >= row[VAL_ACC]:
            self.best = row[VAL_ACC]
        self._say(f"trial {row['trial']}: epoch {row[EPOCH]}/{self.max_epochs} val_acc {row[VAL_ACC]:.4f} "
                  f"(best {self.best:.4f})")

    def finished(self, trial_id: str, how: str) -> None:
        row = self.rows.get(trial_id)
        if row is None:
            return
        row["state"] = ("COMPLETE" if row[EPOCH] >= self.max_epochs else "PRUNED") if how == "done" else "ERROR"
        self._say(f"trial {row['trial']}: {row['state']} after {row[EPOCH]} epochs")

    def _eta(self) -> str:
        if not self.epoch_times:
            return "?"
        done = sum(1 for r in self.rows.values() if r["state"] != "RUNNING")
        left = max(0, self.num_samples - done)
        per_epoch = sum(self.epoch_times) / len(self.epoch_times)
        running = [r for r in self.rows.values() if r["state"] == "RUNNING"]
        lanes = max(1, len(running))
        # Upper bound: every trial still owed trains to the full budget.
        seconds = (left * self.max_epochs - sum(r[EPOCH] for r in running)) * per_epoch / lanes
        return format_eta(seconds)

    def _table(self):
        from rich.table import Table

        table = Table(title=f"dsearch run — {time.time() - self.t0:,.0f} s, best val_acc "
                            f"{self.best:.4f}, ETA ≤ {self._eta()}")
        for col in ("trial", "state", "epoch", "val_acc", "params", "MACs"):
            table.add_column(col, justify="right")
        for row in list(self.rows.values())[-20:]:
            acc = "" if row[VAL_ACC] is None else f"{row[VAL_ACC]:.4f}"
            table.add_row(str(row["trial"]), row["state"], f"{row[EPOCH]}/{self.max_epochs}", acc,
                          f"{row[PARAMS] or 0:,}", f"{row[MACS] or 0:,}")
        return table


def format_eta(seconds: float) -> str:
    """H:MM:SS, with whole days in front past 24 h ("2d 03:00:00"): a week-long search's ETA doesn't wrap."""
    whole = int(max(0.0, seconds) + 0.5)
    days, rest = divmod(whole, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock
