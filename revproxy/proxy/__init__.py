"""
The forwarding path: header rewriting, upstream selection and pooling, the
lean upstream HTTP/1.1 client and the forwarding resource.
"""
