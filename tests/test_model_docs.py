"""The examples in the docstrings of `forward`, `generate`, `recommend` and `score_candidates` run as written
(doctest, with the real T5 tokenizer in place of the Hub's "t5-small")."""

import doctest

import pytest
from conftest import TOKENIZER_DIR

from modeling_peapod import PEAPOD_INPUTS_DOCSTRING, PeaPODForConditionalGeneration


@pytest.mark.parametrize("method", ["forward", "generate", "recommend", "score_candidates"])
def test_docstring_example_runs(method, tokenizer):
    docstring = getattr(PeaPODForConditionalGeneration, method).__doc__
    assert PEAPOD_INPUTS_DOCSTRING.splitlines()[1].strip() in docstring  # the shared inputs section is filled in
    example = docstring.replace('"t5-small"', repr(str(TOKENIZER_DIR)))
    test = doctest.DocTestParser().get_doctest(example, {}, method, None, 0)
    assert test.examples, f"{method} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"the example of {method} fails (output above)"
