"""``MledgeOperator``: one ``mledge`` command as a task; its JSON output is the task's return value (XCom).

The command runs through ``operators.hooks.mledge.MledgeHook`` in the workload environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from operators.hooks.mledge import MledgeHook


class MledgeOperator(BaseOperator):
    """Run one ``mledge`` command as a task; its JSON output is the task's return value (XCom)."""

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e8f4ea"

    def __init__(self, *, arguments: Sequence[str], executable: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.executable = executable
        self._hook: MledgeHook | None = None

    def execute(self, context: Any) -> Any:
        self._hook = MledgeHook(self.executable)
        return self._hook.run(self.arguments, env=self.task_env(context))

    def task_env(self, context: Any) -> dict[str, str] | None:
        """Extra environment for the command; subclasses put Connection credentials here, never in arguments."""
        return None

    def on_kill(self) -> None:
        if self._hook:
            self._hook.kill()
