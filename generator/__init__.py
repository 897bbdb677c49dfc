import generator.diffusion
import generator.interstitial
import generator.random_search
import generator.substitution  # noqa: F401  (registers "substitution")
