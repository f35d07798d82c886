"""The simulated marketing world: raw tables in the contract plus a hidden truth for evaluating policies."""

from nextbest.simulation.campaigns import CampaignPlan
from nextbest.simulation.catalog import CATEGORIES, CHANNELS, channels_table, offers_table
from nextbest.simulation.response import draw_outcomes
from nextbest.simulation.truth import Oracle, Truth
from nextbest.simulation.world import CHUNK_USERS, World, WorldConfig, simulate, simulate_chunks, write_world

__all__ = ["WorldConfig", "World", "simulate", "simulate_chunks", "write_world", "CHUNK_USERS", "Truth", "Oracle", "draw_outcomes", "CampaignPlan", "CATEGORIES",
           "CHANNELS", "offers_table", "channels_table"]
