"""Test and benchmark support shipped with clfast (as ``torch.testing`` is with torch): the Avalanche-style
reference plugins (:mod:`clfast.testing.avalanche`), minimal experiences and streams
(:mod:`clfast.testing.fakes`) and the fixtures of the plugin tests. Nothing in the training API imports it."""
