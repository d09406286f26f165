"""The node's HTTP application: DICOMweb (STOW-RS, QIDO-RS, WADO-RS), UPS-RS and the admin surface.

``node.http.app.create_app`` builds it; ``node.http.server.HttpServer`` serves it with uvicorn in a
thread of ``alnnode serve``. Every route needs a credential (``node.http.auth.require``).
"""
