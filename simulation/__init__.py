"""The simulated marketing world: raw tables in the contract plus a hidden truth for evaluating policies."""

from simulation.campaigns import CampaignPlan
from simulation.catalog import CATEGORIES, CHANNELS, channels_table, offers_table
from simulation.response import draw_outcomes
from simulation.truth import Oracle, Truth
from simulation.world import World, WorldConfig, simulate

__all__ = ["WorldConfig", "World", "simulate", "Truth", "Oracle", "draw_outcomes", "CampaignPlan", "CATEGORIES",
           "CHANNELS", "offers_table", "channels_table"]
