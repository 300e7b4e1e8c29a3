"""scripts/peak_memory.py: a command run in-process while a thread samples the resident set; the peak it reports is
at least what the process held before the command, and the stack it keeps at the peak is the library's own."""

from __future__ import annotations

SCRIPT = "scripts/peak_memory.py"


def test_a_buffer_held_while_sampling_shows_in_the_peak_with_the_stack_that_held_it(load_script):
    module = load_script(SCRIPT)
    before = module.resident_mb()
    sampler = module.Sampler(__import__("threading").get_ident(), period=0.001)
    sampler.start()
    held = bytearray(300 * 10**6)  # touched below: resident, not only reserved
    held[::4096] = b"\1" * len(held[::4096])
    import time
    time.sleep(0.05)
    sampler.running = False
    sampler.join()
    assert sampler.peak >= before + 250
    assert all(not name.startswith("tests/") for name in sampler.peak_stack)  # the library's frames only
    del held


def test_the_library_frames_of_a_stack_are_named_by_file_and_function(load_script):
    module = load_script(SCRIPT)
    namespace: dict = {}
    # code that says it comes from a library file: its frame is kept, the test's frames around it are not
    code = compile("import sys\ndef inner():\n    return sys._getframe()\nframe = inner()",
                   str(module.ROOT / "graph" / "stand_in.py"), "exec")
    exec(code, namespace)
    assert module.library_frames(namespace["frame"]) == ["graph/stand_in.py:<module>", "graph/stand_in.py:inner"]
