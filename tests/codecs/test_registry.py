"""The codec registry's contract: what every registered decoder declares."""

from __future__ import annotations

import pytest

from mediastream import codecs
from mediastream.errors import UnsupportedCodecError

# a frame decodes the same whatever came before it: the session may place a late one
STATELESS = {"PCMU": True, "PCMA": True, "L16": True, "G722": False, "OPUS": False, "AMR-WB": False}


def test_every_registered_encoding_has_a_stateless_expectation():
    assert set(codecs.available_encodings()) == set(STATELESS)


@pytest.mark.parametrize("encoding", codecs.available_encodings())
def test_every_decoder_declares_whether_it_is_stateless(encoding: str):
    try:
        decoder = codecs.decoder(encoding)
    except UnsupportedCodecError as exc:  # an optional extra that is not installed
        pytest.skip(str(exc))
    assert isinstance(decoder, codecs.Decoder)
    assert type(decoder.stateless) is bool
    assert decoder.stateless is STATELESS[encoding]
