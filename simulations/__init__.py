"""Scenario simulations (`voice-worker simulate`): a scenario file calls an agent or team the way its users will,
in text mode (the real session, no audio) or voice mode (a real call through LiveKit), and checks what it must.

`scenario` is the file's schema, `results` the one results model both modes fill, `expectations` and `judge`
decide what held, `report` writes JUnit XML and HTML. Only cli/ imports this package.
"""
