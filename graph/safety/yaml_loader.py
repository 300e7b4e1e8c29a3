"""YAML read with PyYAML's safe loader and no aliases: an alias lets a file of a few hundred bytes expand to
gigabytes in memory (a "billion laughs"), and no recipe or data set needs one."""

from __future__ import annotations

import yaml


def no_alias_loader(where: str) -> type[yaml.SafeLoader]:
    """A SafeLoader subclass that refuses any alias (*name), its error naming `where` ("a recipe", ...)."""

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"aliases (*name) are not allowed in {where}",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader
