"""The apps on the pipelines: command lines, a web page and an HTTP server, on one request layer.

=============  ==================================================================================
``requests``   the tasks' fields, defaults and checks: the only place a request is defined
``errors``     what a surface answers instead of pictures, each with its HTTP status
``service``    one model folder's pipelines, and the one way every surface runs a request
``cli``        ``txt2img``, ``img2img``, ``inpaint``
``digits``     the built-in digits model's ten digits, for the page and the README's grid
``web``        the page, on Gradio (``python -m examples.stable_diffusion.app``)
``serve``      the server, on Ray Serve (``python -m examples.stable_diffusion.serve``)
``network``    which interfaces are up, and the settings that keep the libraries offline
=============  ==================================================================================
"""
