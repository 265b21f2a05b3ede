"""Privacy options of a federated run: differential privacy, secure aggregation (SecAgg+), and both.

One concept per module:

- ``modes``: the run config's ``privacy`` mode and its knobs (``PrivacySettings``), and which strategy may run with
  which mode (``check_combination``; refused combinations say why);
- ``accountant``: the (epsilon, delta) of a run, from Google's ``dp-accounting`` RDP accountant, and the noise
  multiplier that reaches a target epsilon;
- ``vectors`` and ``noise``: pure functions on updates (flatten, clip, grid rounding, discrete Gaussian noise);
- ``screening``: which sites the platform keeps in a secure round, from the scalar summaries they disclose;
- ``central_dp.CentralGaussianMean``: the ``dp`` mode's strategy (clip every update, mean, Gaussian noise);
- ``secagg.SecAggPlusMean``: the ``secagg`` and ``secagg-dp`` modes' strategy, Flower's SecAgg+ stages driven
  from a Message-API ServerApp (``legacy.LegacyShim`` adapts Flower's legacy workflow);
- ``client.privacy_mod``: the sites' side (a ClientApp mod: clip, summarise, add the site's share of the noise,
  mask with Flower's ``secaggplus_mod``);
- ``server.apply_privacy``: what the ServerApp calls (the wrapped strategy and the run's privacy report).

Only ``client`` is imported by the ClientApp, and it imports nothing heavy (no dp-accounting, no torch).
"""
