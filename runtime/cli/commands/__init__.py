"""Every top-level command of the CLI, in the order ``mlops --help`` lists them."""

from __future__ import annotations

from runtime.cli.commands.apply import apply_command
from runtime.cli.commands.approve import approve_command
from runtime.cli.commands.audit import audit_group
from runtime.cli.commands.compile import compile_command
from runtime.cli.commands.graph import graph_command
from runtime.cli.commands.init import init_command
from runtime.cli.commands.lineage import lineage_command
from runtime.cli.commands.models import models_group
from runtime.cli.commands.monitor import monitor_group
from runtime.cli.commands.plan import plan_command
from runtime.cli.commands.policy import policy_group
from runtime.cli.commands.reconcile import reconcile_command
from runtime.cli.commands.rollback import rollback_command
from runtime.cli.commands.runs import runs_group
from runtime.cli.commands.schema import schema_command
from runtime.cli.commands.status import status_command
from runtime.cli.commands.unlock import force_unlock_command
from runtime.cli.commands.up import down_command, up_command
from runtime.cli.commands.validate import validate_command

COMMANDS = [init_command, validate_command, policy_group, graph_command, compile_command, plan_command, apply_command,
            status_command, approve_command, rollback_command, reconcile_command, up_command, down_command, runs_group,
            models_group, lineage_command, monitor_group, audit_group, force_unlock_command, schema_command]
