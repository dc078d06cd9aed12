"""Scoring predictions: mAP^r under the SDS protocol, COCO mask AP, and the fate of each detection.

    coco       predictions as COCO results JSON (RLE masks), pycocotools' COCO AP
    sds        mask IoU, SDS matching, AP (area and VOC07), mAP^r at 0.5 / 0.7
    report     both protocols in one dict: what ``python -m mnc_teach evaluate`` prints
    analysis   every detection's and every object's fate under SDS matching
    proposals  recall of stage-1 proposals against their number (notebook 02)
"""
