"""podgrace's termination lab: real nginx / php-fpm / Apache pods terminated the kubelet's way under load."""
