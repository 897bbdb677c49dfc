import generator.random_search  # noqa: F401  (registers "random_search")
import generator.substitution  # noqa: F401  (registers "substitution")
