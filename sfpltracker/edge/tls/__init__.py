"""TLS for the gateway's HTTPS listener: certificates, SNI, and ACME (Let's Encrypt).

``certs``   certificate pairs on disk, the self-signed default, the per-host store
``server``  the OpenSSL server side: TLS 1.2+, SNI picks the host's certificate, ALPN
``alpn``    tls-alpn-01 validation certificates (RFC 8737)
``acme``    obtaining and renewing certificates with certbot's ``acme`` library
"""
