"""Feast entities: the one key every feature hangs on."""

from feast import Entity, ValueType

__all__ = ["user"]

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person a company may contact.")
