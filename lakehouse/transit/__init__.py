"""micromegas transit blocks: type metadata, and the decoder that turns a block's payload into columns.

Modules:

    decode    a block payload → `views.decoded.DecodedBlock` (vectorized)
    metadata  the `UserDefinedType`s a stream declares, compiled into flat layouts
    dynamic   the hand-coded types: dependencies read one by one, dynamically sized objects
"""
