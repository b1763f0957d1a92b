"""Every top-level command of the CLI, in the order ``mlops --help`` lists them.

Each entry names the module and the click command in it; a command's module is imported only when
that command runs (or ``--help`` lists them all), so ``mlops validate`` never loads the runtime.
"""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    "init": "runtime.cli.commands.init:init_command",
    "validate": "runtime.cli.commands.validate:validate_command",
    "policy": "runtime.cli.commands.policy:policy_group",
    "graph": "runtime.cli.commands.graph:graph_command",
    "compile": "runtime.cli.commands.compile:compile_command",
    "plan": "runtime.cli.commands.plan:plan_command",
    "apply": "runtime.cli.commands.apply:apply_command",
    "status": "runtime.cli.commands.status:status_command",
    "approve": "runtime.cli.commands.approve:approve_command",
    "rollback": "runtime.cli.commands.rollback:rollback_command",
    "reconcile": "runtime.cli.commands.reconcile:reconcile_command",
    "up": "runtime.cli.commands.up:up_command",
    "down": "runtime.cli.commands.up:down_command",
    "runs": "runtime.cli.commands.runs:runs_group",
    "models": "runtime.cli.commands.models:models_group",
    "lineage": "runtime.cli.commands.lineage:lineage_command",
    "erase": "runtime.cli.commands.erase:erase_command",
    "logs": "runtime.cli.commands.logs:logs_command",
    "monitor": "runtime.cli.commands.monitor:monitor_group",
    "audit": "runtime.cli.commands.audit:audit_group",
    "force-unlock": "runtime.cli.commands.unlock:force_unlock_command",
    "gc": "runtime.cli.commands.gc:gc_command",
    "state": "runtime.cli.commands.state:state_group",
    "report": "runtime.cli.commands.report:report_command",
    "diff": "runtime.cli.commands.diff:diff_command",
    "schema": "runtime.cli.commands.schema:schema_command",
}
