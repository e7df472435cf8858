"""``pact bench quality``: accuracy kept against reduction ratio, on pact's trained VLM.

:mod:`~pact.bench.quality.methods` sets each method's strength knob to a target ratio and
scores it; :mod:`~pact.bench.quality.report` runs methods x ratios and plots them. The model
and its task are :mod:`pact.models.shapes`.
"""
