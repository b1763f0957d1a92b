"""Every top-level command of the CLI, in the order ``mlops --help`` lists them."""

from __future__ import annotations

from runtime.cli.commands.apply import apply_command
from runtime.cli.commands.approve import approve_command
from runtime.cli.commands.compile import compile_command
from runtime.cli.commands.graph import graph_command
from runtime.cli.commands.init import init_command
from runtime.cli.commands.plan import plan_command
from runtime.cli.commands.policy import policy_group
from runtime.cli.commands.schema import schema_command
from runtime.cli.commands.validate import validate_command

COMMANDS = [init_command, validate_command, policy_group, graph_command, compile_command, plan_command,
            apply_command, approve_command, schema_command]
