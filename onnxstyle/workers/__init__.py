"""Stylizing many inputs at once: ``worker`` (one warm stylizer taking images or video chunks
one after another), ``pools`` (local processes or Ray actors running workers) and
``ray_address`` (a Ray address checked before Ray is handed it). Ray is imported only there."""
