"""What the API and the worker share: settings, the job store, the model store and the queue.

Neither torch nor the web framework is imported here, so the API stays free
of torch and the worker free of the web layer.
"""
