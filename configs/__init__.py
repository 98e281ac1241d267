"""The packaged YAML configs (installed as ``glow_train.configs``).

Importing this package, which Hydra does before it composes a config from it,
registers the dataclass schemas the YAML files name in their defaults lists.
"""

from glow_train.config import register_configs

register_configs()
