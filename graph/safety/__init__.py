"""Reading untrusted files safely: the archive, regular files, the op allow-list, shape expressions and graph bounds."""
