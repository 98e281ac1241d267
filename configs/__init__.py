"""The packaged YAML configs (installed as ``glow_train.configs``).

Importing this package, which Hydra does before it composes a config from it,
registers the dataclass schemas the YAML files name in their defaults lists and
glow-train's sweeper (``hydra/sweeper=glow``, the default of ``glow-train -m``).
"""

from glow_train.cli.common import make_sweeper_visible
from glow_train.config import register_configs

register_configs()
make_sweeper_visible()
