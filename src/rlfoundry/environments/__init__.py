"""Multi-turn environments for GRPO: the contract (``base``), its registry, the episode
runner (``episodes``) that plays them with a rollout backend, tool calls (``tool_calls``;
``tag_calls``: the ``tags`` format),
tools (``tools``, built-ins in ``builtin_tools``) and the ``tools`` environment (``tool_env``)."""

from rlfoundry.environments import builtin_tools  # noqa: F401  (registers calculator, python)
from rlfoundry.environments.base import (
    ENVIRONMENTS,
    Environment,
    EnvStep,
    EpisodeStart,
    Message,
    register_environment,
)
from rlfoundry.environments.episodes import EpisodeRunner, EpisodeSettings
from rlfoundry.environments.tag_calls import parse_tags
from rlfoundry.environments.tool_calls import (
    TOOL_PARSERS,
    CallError,
    ParsedTurn,
    ToolCall,
    parse_hermes,
    register_tool_parser,
)
from rlfoundry.environments.tool_env import ToolEnvironment
from rlfoundry.environments.tools import (
    TOOLS,
    Tool,
    ToolFailure,
    ToolResult,
    register_tool,
    run_tool_call,
)

__all__ = [
    "ENVIRONMENTS", "TOOLS", "TOOL_PARSERS", "CallError", "EnvStep", "Environment", "EpisodeRunner",
    "EpisodeSettings", "EpisodeStart", "Message", "ParsedTurn", "Tool", "ToolCall", "ToolEnvironment",
    "ToolFailure", "ToolResult", "parse_hermes", "parse_tags", "register_environment", "register_tool",
    "register_tool_parser", "run_tool_call",
]
