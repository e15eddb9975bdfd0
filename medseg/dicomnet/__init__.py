"""DICOM networking: the node that `medseg serve` runs (:mod:`medseg.dicomnet.node`: receive series, segment
them as `medseg infer` does, send the DICOM SEG back) and the client it and `medseg infer --send-to` use
(:mod:`medseg.dicomnet.client`: name a peer, C-ECHO it, C-STORE files to it)."""
