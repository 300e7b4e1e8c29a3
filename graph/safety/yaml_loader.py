"""YAML read with PyYAML's safe loader, no aliases, no tags and no repeated keys: an alias lets a file of a few hundred
bytes expand to gigabytes in memory (a "billion laughs"), and no recipe or data set needs one; a key given twice
would silently keep the last (a recipe's second `passes:` replacing its first). Every error is a YAMLError."""

from __future__ import annotations

from collections.abc import Hashable

import yaml

from prunefx.graph.errors import printable


def no_alias_loader(where: str) -> type[yaml.SafeLoader]:
    """A SafeLoader subclass that refuses any alias (*name) and any key repeated in one mapping, its error naming
    `where` ("a recipe", ...)."""

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"aliases (*name) are not allowed in {where}",
                                                  event.start_mark)
            if getattr(event, "tag", None) is not None:  # `!!set`, `!!binary`: types no plain value has
                raise yaml.composer.ComposerError(None, None, f"tags ({printable(event.tag)[:40]}) are not allowed "
                                                  f"in {where}", event.start_mark)
            return super().compose_node(parent, index)

        def construct_yaml_int(self, node):
            # PyYAML's own reading of `0x_` or `0b_` (a prefix, then only underscores) raises a bare ValueError
            try:
                return super().construct_yaml_int(node)
            except ValueError:
                raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a number",
                                                        node.start_mark) from None

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping "
                                                            f"of {where} (again on line {key_node.start_mark.line + 1})",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    NoAliasLoader.add_constructor("tag:yaml.org,2002:int", NoAliasLoader.construct_yaml_int)
    return NoAliasLoader
